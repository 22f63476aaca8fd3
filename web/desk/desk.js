// The Parley web desk: sign-in, the live operator session over /desk/ws, offers, conversations with the customer's whole history, replies with files, canned answers, transfers and the supervisor view.
//
// Everything shown that comes from outside (customer and operator text, names, file names,
// subjects, notes, error messages) goes into the page through textContent or attribute
// values, never as markup. Files are fetched with the Authorization header and shown or
// offered through blob: URLs; the token never appears in a URL.

import { t, plural, lang, setLang, applyStatic } from "./i18n.js";

// ───────────────────────────── small helpers ─────────────────────────────

const $ = (sel) => document.querySelector(sel);

/** Builds an element; string children become text nodes (never markup). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A uint64 from its JSON form (a decimal string, or a number from a lenient server). */
function big(x) {
  try {
    return BigInt(String(x ?? "0"));
  } catch {
    return 0n;
  }
}

/** Milliseconds since the epoch from an RFC 3339 timestamp (any fraction), or 0. */
function ts(s) {
  if (!s) return 0;
  const m = /^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$/i.exec(String(s));
  if (!m) return Date.parse(s) || 0;
  const frac = m[2] ? m[2].slice(0, 4).padEnd(4, "0") : "";
  return Date.parse(m[1] + frac + m[3]) || 0;
}

/** Seconds from a proto3 JSON Duration ("30s", "1.5s"). */
function durSeconds(s) {
  const m = /^(-?\d+(?:\.\d+)?)s$/.exec(String(s ?? ""));
  return m ? Number(m[1]) : 0;
}

/** The server's clock now, as far as the Date headers of its answers tell. */
function serverNow() {
  return Date.now() - S.skewMs;
}

/** "0:42", "12:05", "1:02:03". */
function fmtElapsed(sec) {
  sec = Math.max(0, Math.floor(sec));
  const hh = Math.floor(sec / 3600);
  const mm = Math.floor((sec % 3600) / 60);
  const ss = String(sec % 60).padStart(2, "0");
  return hh > 0 ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

/** "45 s", "42 min", "3 h 10 min", "2 d 4 h". */
function fmtSpan(sec) {
  sec = Math.max(0, Math.floor(sec));
  if (sec < 60) return t("time.s", { n: sec });
  const min = Math.floor(sec / 60);
  if (min < 60) return t("time.m", { n: min });
  const hrs = Math.floor(min / 60);
  if (hrs < 48) return t("time.hm", { h: hrs, m: min % 60 });
  return t("time.dh", { d: Math.floor(hrs / 24), h: hrs % 24 });
}

function fmtSize(bytes) {
  const n = Number(bytes ?? 0);
  const nf = (v) => new Intl.NumberFormat(lang(), { maximumFractionDigits: 1 }).format(v);
  if (n < 1024) return t("size.b", { n });
  if (n < 1024 * 1024) return t("size.kb", { n: nf(n / 1024) });
  return t("size.mb", { n: nf(n / (1024 * 1024)) });
}

function fmtTime(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const opts = sameDay
    ? { hour: "2-digit", minute: "2-digit" }
    : { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
  return new Intl.DateTimeFormat(lang(), opts).format(d);
}

function fmtDate(ms) {
  if (!ms) return "";
  return new Intl.DateTimeFormat(lang(), { day: "numeric", month: "long", year: "numeric" }).format(new Date(ms));
}

function fmtDateTime(ms) {
  if (!ms) return "";
  return new Intl.DateTimeFormat(lang(), { dateStyle: "medium", timeStyle: "short" }).format(new Date(ms));
}

/** A random id for a reply; crypto.randomUUID exists only in secure contexts. */
function newClientMessageId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const reducedMotion = () => window.matchMedia("(prefers-reduced-motion: reduce)").matches;

// ───────────────────────────── enums ─────────────────────────────

const CHANNEL_NAMES = [
  "CHANNEL_UNSPECIFIED",
  "CHANNEL_API",
  "CHANNEL_WEBCHAT",
  "CHANNEL_EMAIL",
  "CHANNEL_SMS",
  "CHANNEL_TELEGRAM",
  "CHANNEL_WHATSAPP",
  "CHANNEL_VIBER",
];
const SENDER_NAMES = ["unspecified", "customer", "operator", "bot", "system"];
const DELIVERY_NAMES = ["unspecified", "accepted", "sent", "delivered", "read", "failed"];
const STATUS_NAMES = ["unknown", "online", "away", "offline", "draining"];
const ATTACHMENT_KINDS = ["unspecified", "image", "document", "audio", "video", "voice", "sticker"];

/** An enum value in its short form: "CHANNEL_SMS" stays, "SENDER_KIND_CUSTOMER" → "customer". */
function channelOf(v) {
  if (typeof v === "number") return CHANNEL_NAMES[v] ?? "CHANNEL_UNSPECIFIED";
  return CHANNEL_NAMES.includes(v) ? v : "CHANNEL_UNSPECIFIED";
}
function shortEnum(v, prefix, names) {
  if (typeof v === "number") return names[v] ?? names[0];
  if (typeof v === "string" && v.startsWith(prefix)) return v.slice(prefix.length).toLowerCase();
  return names[0];
}
const senderOf = (v) => shortEnum(v, "SENDER_KIND_", SENDER_NAMES);
const deliveryOf = (v) => shortEnum(v, "DELIVERY_STATE_", DELIVERY_NAMES);
const statusOf = (v) => shortEnum(v, "OPERATOR_STATUS_", STATUS_NAMES);
const attachmentKindOf = (v) => shortEnum(v, "ATTACHMENT_KIND_", ATTACHMENT_KINDS);
const convStatusOf = (v) =>
  shortEnum(v, "CONVERSATION_STATUS_", ["unspecified", "queued", "offered", "assigned", "closed"]);

const DELIVERY_RANK = { unspecified: 0, queued: 0, sending: 0, accepted: 1, sent: 2, delivered: 3, read: 4, failed: 5 };

// ───────────────────────────── channel icons ─────────────────────────────

const ICON_PATHS = {
  CHANNEL_WEBCHAT: ["M4 5h16v10H9l-5 4z", "M8 9h8", "M8 12h5"],
  CHANNEL_EMAIL: ["M3 6h18v12H3z", "M3 7l9 6 9-6"],
  CHANNEL_SMS: ["M7 3h10v18H7z", "M11 18h2", "M9.5 7h5", "M9.5 10h5"],
  CHANNEL_TELEGRAM: ["M21 4L3 11l6 2 2 6 3-4 4 3z", "M9 13l12-9"],
  CHANNEL_WHATSAPP: [
    "M12 3a9 9 0 0 0-7.8 13.5L3 21l4.6-1.2A9 9 0 1 0 12 3z",
    "M9 8.5c0 3.5 3 6.5 6.5 6.5l1-1.8-2-1-1 1c-1.3-.5-2.7-1.9-3.2-3.2l1-1-1-2z",
  ],
  CHANNEL_VIBER: [
    "M5 4h14a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2h-7l-4 3v-3H5a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z",
    "M10 8c0 2.5 2 4.5 4.5 4.5",
  ],
  CHANNEL_API: ["M8 7l-5 5 5 5", "M16 7l5 5-5 5", "M13.5 5l-3 14"],
  CHANNEL_UNSPECIFIED: ["M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18z", "M12 8v5", "M12 16h.01"],
};

/** A channel's icon with its name as the accessible label. */
function channelIcon(channel) {
  const ch = channelOf(channel);
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "2");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  for (const d of ICON_PATHS[ch] ?? ICON_PATHS.CHANNEL_UNSPECIFIED) {
    const p = document.createElementNS(NS, "path");
    p.setAttribute("d", d);
    svg.append(p);
  }
  const name = t(`channel.${ch}`);
  const wrap = h("span", {
    class: `channel-icon ch-${ch}`,
    role: "img",
    "aria-label": name,
    title: name,
    "data-testid": "channel-icon",
    "data-channel": ch,
  });
  wrap.append(svg);
  return wrap;
}

// ───────────────────────────── SMS segments ─────────────────────────────
// The same count as parley-channels' segments.rs: GSM-7 with its extension table when every
// character fits (160 / 153 septets), UCS-2 otherwise (70 / 67 UTF-16 units); a character that
// would straddle two parts moves whole to the next.

const GSM7_BASIC = new Set(
  "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà",
);
const GSM7_EXTENSION = new Set("\f^{}\\[~]|€");

export function smsCount(text) {
  const chars = [...text];
  let costs = [];
  let gsm = true;
  for (const c of chars) {
    if (GSM7_BASIC.has(c)) costs.push(1);
    else if (GSM7_EXTENSION.has(c)) costs.push(2);
    else {
      gsm = false;
      break;
    }
  }
  if (!gsm) costs = chars.map((c) => (c.codePointAt(0) > 0xffff ? 2 : 1));
  const [single, part] = gsm ? [160, 153] : [70, 67];
  const units = costs.reduce((a, b) => a + b, 0);
  let segments = 0;
  if (units > 0 && units <= single) segments = 1;
  else if (units > single) {
    segments = 1;
    let used = 0;
    for (const cost of costs) {
      if (used + cost > part) {
        segments += 1;
        used = 0;
      }
      used += cost;
    }
  }
  return { encoding: gsm ? "GSM-7" : "UCS-2", units, segments, single, part };
}

// ───────────────────────────── state ─────────────────────────────

const TOKEN_KEY = "parley.desk.token";

const S = {
  token: "",
  operatorId: "",
  me: null,
  presence: null,
  isSupervisor: false,
  supervisorOnly: false,
  skewMs: 0,

  ws: null,
  welcomed: false,
  stopped: true,
  everConnected: false,
  backoff: 500,
  reconnectTimer: 0,
  heartbeatTimer: 0,
  heartbeatMs: 5000,
  lastFrameAt: 0,
  lastSeq: 0n,
  ackedSeq: 0n,
  ackTimer: 0,
  loaded: false,
  loadGen: 0,
  touched: new Set(),

  /** Per conversation, the largest conversationVersion applied. */
  versions: new Map(),
  /** Conversations I own, by id. */
  convs: new Map(),
  /** Offers, by conversation id. */
  offers: new Map(),
  /** Replies sent and not yet answered, by clientMessageId. */
  pending: new Map(),
  /** Delivery updates that came before their message, by message id. */
  earlyDelivery: new Map(),
  customers: new Map(),
  queues: new Map(),
  operators: new Map(),
  skills: [],
  listsLoadedAt: 0,
  viewed: {},
  openId: "",
  view: null,
  lastTypingSent: new Map(),
  tickTimer: 0,
  presenceTimer: 0,
  supTimer: 0,
  // Operators' presences in the supervisor view, by id.
  presences: new Map(),
  statusBusy: null,
};

// ───────────────────────────── HTTP API ─────────────────────────────

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

/** Calls `POST /desk/api/{service}/{Method}` with the session's token. */
async function api(path, body = {}) {
  const token = S.token;
  let res;
  try {
    res = await fetch(`/desk/api/${path}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    throw new ApiError(0, "UNAVAILABLE", t("error.network"));
  }
  const date = Date.parse(res.headers.get("Date") ?? "");
  if (date) {
    const skew = Date.now() - date;
    // The Date header has a resolution of a second: only a clearly wrong clock is corrected.
    S.skewMs = Math.abs(skew) > 3000 ? skew : 0;
  }
  const text = await res.text();
  let json = {};
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    json = {};
  }
  if (!res.ok) {
    const err = new ApiError(res.status, json.code || `HTTP_${res.status}`, json.message || res.statusText || json.code);
    if (res.status === 401 && token === S.token && S.token) signOut(t("login.refused", { message: err.message }));
    throw err;
  }
  return json ?? {};
}

// ───────────────────────────── notices ─────────────────────────────

let noticeTimer = 0;
function notice(text) {
  const el = $("#notice");
  el.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    el.textContent = "";
  }, 7000);
}

function announce(text) {
  const el = $("#announcer");
  el.textContent = "";
  setTimeout(() => {
    el.textContent = text;
  }, 50);
}

// ───────────────────────────── storage per operator ─────────────────────────────

function loadJson(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key) ?? "null");
    return v ?? fallback;
  } catch {
    return fallback;
  }
}

function saveJson(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: kept for this page only.
  }
}

const viewedKey = () => `parley.desk.viewed.${S.operatorId}`;
const cannedKey = () => `parley.desk.canned.${S.operatorId}`;

// ───────────────────────────── the session (WebSocket) ─────────────────────────────

function setConn(state) {
  const el = $("#connection");
  el.dataset.state = state;
  $("#connection-text").textContent = t(`conn.${state}`);
}

function sendFrame(frame) {
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN || !S.welcomed) return false;
  S.ws.send(JSON.stringify(frame));
  return true;
}

function connect() {
  clearTimeout(S.reconnectTimer);
  if (S.stopped) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  setConn(S.everConnected ? "reconnecting" : "connecting");
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${location.host}/desk/ws`);
  } catch {
    scheduleReconnect();
    return;
  }
  const requested = S.lastSeq;
  S.ws = ws;
  S.welcomed = false;
  S.lastFrameAt = Date.now();
  ws.addEventListener("open", () => {
    if (ws !== S.ws) return;
    ws.send(
      JSON.stringify({
        token: S.token,
        hello: { resumeAfterSequence: requested.toString(), clientName: "web desk" },
      }),
    );
  });
  ws.addEventListener("message", (e) => {
    if (ws !== S.ws) return;
    S.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(e.data);
    } catch {
      return;
    }
    onFrame(frame, requested);
  });
  ws.addEventListener("close", () => {
    if (ws !== S.ws) return;
    dropSocket();
  });
  // A socket that opens but never says welcome is as good as dropped.
  setTimeout(() => {
    if (ws === S.ws && !S.welcomed) dropSocket();
  }, 15000);
}

/** Forgets the socket and, unless signed out, reconnects with backoff. */
function dropSocket() {
  const ws = S.ws;
  const welcomed = S.welcomed;
  S.ws = null;
  S.welcomed = false;
  startHeartbeatClock(0);
  if (ws && ws.readyState <= WebSocket.OPEN) {
    try {
      ws.close();
    } catch {
      // Already closing.
    }
  }
  for (const rec of S.pending.values()) {
    if (rec.local === "sending") rec.local = "queued";
  }
  refreshPendingViews();
  if (S.stopped) return;
  if (!welcomed) {
    // Closed before a welcome and without an error frame: a refused token would look like
    // this if the upgrade itself was refused; an API call tells (a 401 signs out).
    api("routing/GetOperatorPresence", { operatorId: "" }).catch(() => {});
  }
  setConn("reconnecting");
  scheduleReconnect();
}

function scheduleReconnect() {
  clearTimeout(S.reconnectTimer);
  // 0.5 s doubling to 10 s, each wait jittered by ±25 %.
  const base = Math.min(10000, S.backoff);
  const delay = base * (0.75 + Math.random() * 0.5);
  S.backoff = Math.min(10000, S.backoff * 2);
  S.reconnectTimer = setTimeout(connect, delay);
}

function onFrame(f, requested) {
  if (f.welcome) onWelcome(f.welcome, requested);
  else if (f.event) onEvent(f.event);
  else if (f.replyAccepted) onReplyAccepted(f.replyAccepted);
  else if (f.replyRejected) onReplyRejected(f.replyRejected);
  else if (f.error) onSessionError(f.error, requested);
  // A heartbeat only refreshes lastFrameAt.
}

function onWelcome(w, requested) {
  S.welcomed = true;
  S.backoff = 500;
  S.everConnected = true;
  setConn("connected");
  const operatorId = w.operatorId ?? "";
  if (S.operatorId && operatorId && S.operatorId !== operatorId) resetData();
  if (operatorId !== S.operatorId) {
    S.operatorId = operatorId;
    S.viewed = loadJson(viewedKey(), {});
  }
  S.heartbeatMs = Math.max(1, Number(w.heartbeatIntervalSeconds ?? 0) || 5) * 1000;
  // A little more often than asked, so timer drift never makes one late.
  startHeartbeatClock(Math.max(500, S.heartbeatMs * 0.8));
  const resumed = big(w.resumeAfterSequence);
  const continuous = S.loaded && requested !== 0n && resumed === requested;
  S.lastSeq = resumed;
  S.ackedSeq = resumed;
  if (!continuous) loadState();
  // Replies not answered before the drop go again, with the same clientMessageId.
  for (const rec of S.pending.values()) {
    if (rec.local === "sending" || rec.local === "queued") {
      if (sendFrame(replyFrame(rec))) rec.local = "sending";
    }
  }
  refreshPendingViews();
}

// Heartbeats keep the operator's presence alive, so they must go on while the desk's tab is
// in the background, where the page's own timers run as rarely as once a minute. A worker's
// timers are not slowed that way: this same file, started as a module worker, is the clock
// (CSP allows it as a 'self' script); without workers the page's timer is used.
let clock = null;
function startHeartbeatClock(ms) {
  clearInterval(S.heartbeatTimer);
  S.heartbeatTimer = 0;
  if (clock === null) {
    try {
      clock = new Worker(import.meta.url, { type: "module", name: "parley-desk-clock" });
      clock.addEventListener("message", () => heartbeat());
      clock.addEventListener("error", () => {
        clock = false;
        startHeartbeatClock(S.welcomed ? Math.max(500, S.heartbeatMs * 0.8) : 0);
      });
    } catch {
      clock = false;
    }
  }
  if (clock) clock.postMessage(ms);
  else if (ms > 0) S.heartbeatTimer = setInterval(heartbeat, ms);
}

function heartbeat() {
  if (!S.ws) return;
  if (Date.now() - S.lastFrameAt > S.heartbeatMs * 3 + 5000) {
    // The server answers every heartbeat; silence this long means the link is dead.
    dropSocket();
    return;
  }
  sendFrame({ heartbeat: {} });
}

function onSessionError(err, requested) {
  const code = err.code ?? "UNKNOWN";
  const message = err.message ?? code;
  if (code === "UNAUTHENTICATED") {
    signOut(t("login.refused", { message }));
    return;
  }
  if (code === "PERMISSION_DENIED") {
    // Not an operator's token: a supervisor or admin sees the supervisor view only.
    S.stopped = true;
    const ws = S.ws;
    S.ws = null;
    ws?.close();
    probeSupervisor().then((ok) => {
      if (ok) enterSupervisorOnly();
      else signOut(t("login.refused", { message }));
    });
    return;
  }
  // The resume point may be gone (stream trimmed): start over from now with a full reload.
  if (requested !== 0n && ["OUT_OF_RANGE", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "NOT_FOUND"].includes(code)) {
    S.lastSeq = 0n;
  }
  if (code !== "UNAVAILABLE") notice(t("error.session", { message }));
  // The server closes the socket next; the close reconnects.
}

let ackScheduled = false;
function scheduleAck() {
  if (ackScheduled) return;
  ackScheduled = true;
  setTimeout(() => {
    ackScheduled = false;
    if (S.lastSeq > S.ackedSeq && sendFrame({ ack: { sequence: S.lastSeq.toString() } })) S.ackedSeq = S.lastSeq;
  }, 150);
}

// ───────────────────────────── events ─────────────────────────────

function onEvent(ev) {
  const seq = big(ev.sequence);
  if (seq !== 0n && seq <= S.lastSeq) return; // Already applied (a repeat across a resume).
  try {
    applyEvent(ev);
  } catch (e) {
    console.error("desk event not applied", e, ev);
  }
  if (seq > S.lastSeq) S.lastSeq = seq;
  scheduleAck();
}

function eventConversationId(ev) {
  return (
    ev.offered?.conversation?.id ??
    ev.assigned?.conversation?.id ??
    ev.message?.conversationId ??
    ev.released?.conversationId ??
    ev.delivery?.conversationId ??
    ev.typing?.conversationId ??
    ""
  );
}

function applyEvent(ev) {
  const convId = eventConversationId(ev);
  const version = big(ev.conversationVersion);
  if (convId && version > 0n) {
    // Events of one conversation can arrive out of order across routing replicas.
    if (version < (S.versions.get(convId) ?? 0n)) return;
    S.versions.set(convId, version);
  }
  if (convId) S.touched.add(convId);
  if (ev.offered) onOffered(ev.offered, ev);
  else if (ev.assigned) onAssigned(ev.assigned);
  else if (ev.message) onMessage(ev.message);
  else if (ev.released) onReleased(ev.released);
  else if (ev.delivery) onDelivery(ev.delivery);
  else if (ev.typing) onTyping(ev.typing);
}

function onOffered(o, ev) {
  const c = o.conversation ?? {};
  if (!c.id) return;
  const expireAt = ts(o.expireTime);
  const start = ts(ev.eventTime) || serverNow();
  S.offers.set(c.id, { conversation: c, expireAt, startAt: Math.min(start, expireAt || start), busy: false, el: null, error: "" });
  renderOffers();
  const name = customerName(c.customerId);
  announce(t("offer.new", { name, channel: t(`channel.${channelOf(c.channel)}`) }));
  ensureCustomer(c.customerId).then(() => renderOffers());
  ensureQueues().then(() => renderOffers());
}

function onAssigned(a) {
  const c = a.conversation ?? {};
  if (!c.id) return;
  removeOffer(c.id);
  const conv = upsertConv(c);
  if (a.customerDisplayName) {
    conv.customerName = a.customerDisplayName;
    const known = S.customers.get(conv.customerId);
    if (known && !known.displayName) known.displayName = a.customerDisplayName;
  }
  if (a.transferNote) conv.transferNote = a.transferNote;
  if (a.replyWindowCloseTime) conv.windowClose = ts(a.replyWindowCloseTime);
  for (const m of a.recentMessages ?? []) addMessage(conv, m);
  conv.recentLoaded = true;
  ensureCustomer(conv.customerId).then(() => updateConvViews(conv));
  renderList();
  if (S.openId === conv.id) {
    renderConversationHeader();
    renderInfo();
    renderMessages();
  }
}

function onMessage(m) {
  const id = m.conversationId;
  if (!id) return;
  let conv = S.convs.get(id);
  if (!conv) {
    conv = upsertConv({ id, customerId: m.customerId, channel: m.channel, status: "CONVERSATION_STATUS_ASSIGNED" });
    fetchConversation(id);
  }
  const rec = addMessage(conv, m);
  if (rec.sender === "customer") {
    conv.typingUntil = 0;
    const isOpen = S.openId === id && document.visibilityState === "visible";
    if (isOpen) markViewed(conv);
    else announce(t("list.newMessage", { name: customerName(conv.customerId, conv) }));
  }
  renderList();
  if (S.openId === id) {
    renderMessages();
    updateTyping();
    updateWindowWarning();
  }
}

function onReleased(r) {
  const id = r.conversationId;
  if (!id) return;
  removeOffer(id);
  const conv = S.convs.get(id);
  if (!conv) return;
  S.convs.delete(id);
  abortUploads(conv);
  for (const [cmid, rec] of S.pending) if (rec.conversationId === id) S.pending.delete(cmid);
  conv.itemEl?.parentElement?.remove();
  renderList();
  if (S.openId === id) {
    const reason = r.reason ?? "";
    const key = `conv.released.${reason}`;
    notice(t(key) === key ? t("conv.released.other") : t(key));
    closeView();
  }
  pruneViewed();
}

function onDelivery(d) {
  const conv = S.convs.get(d.conversationId ?? "");
  const rec = conv?.index.get(d.messageId ?? "");
  if (!rec) {
    S.earlyDelivery.set(d.messageId, d);
    return;
  }
  applyDelivery(rec, deliveryOf(d.state), d.failureReason ?? "");
}

function applyDelivery(rec, state, reason) {
  if (state === "unspecified") return;
  if (state === "failed" || DELIVERY_RANK[state] > (DELIVERY_RANK[rec.delivery] ?? 0)) {
    rec.delivery = state;
    if (state === "failed") rec.failureReason = reason;
    updateDelivery(rec);
  }
}

function onTyping(ty) {
  const conv = S.convs.get(ty.conversationId ?? "");
  if (!conv) return;
  conv.typingUntil = Date.now() + 5000;
  updateItem(conv);
  if (S.openId === conv.id) updateTyping();
}

function onReplyAccepted(a) {
  const rec = S.pending.get(a.clientMessageId ?? "");
  if (!rec) return;
  S.pending.delete(rec.clientMessageId);
  rec.local = null;
  rec.error = "";
  settleFiles(rec, true);
  const conv = S.convs.get(rec.conversationId);
  if (a.messageId) {
    rec.id = a.messageId;
    // The message event for it may already be here as a record of its own: merge.
    const other = conv?.index.get(a.messageId);
    if (conv && other && other !== rec) {
      conv.records.delete(other.key);
      other.el?.remove();
      rec.delivery = DELIVERY_RANK[other.delivery] > DELIVERY_RANK[rec.delivery] ? other.delivery : rec.delivery;
    }
    conv?.index.set(a.messageId, rec);
    if (rec.el) rec.el.dataset.messageId = a.messageId;
  }
  if (a.acceptTime) rec.time = ts(a.acceptTime);
  if (DELIVERY_RANK[rec.delivery] < DELIVERY_RANK.accepted) rec.delivery = "accepted";
  const segments = Number(a.smsSegments ?? 0);
  if (segments > 0) {
    rec.sms = { segments, encoding: a.smsEncoding ?? "" };
    if (conv) conv.lastSms = rec.sms;
  }
  const early = S.earlyDelivery.get(rec.id);
  if (early) {
    S.earlyDelivery.delete(rec.id);
    applyDelivery(rec, deliveryOf(early.state), early.failureReason ?? "");
  }
  if (conv) conv.waitCache = undefined;
  refreshMessage(rec);
  if (conv) updateItem(conv);
  if (S.openId === rec.conversationId) updateSmsLast();
}

function onReplyRejected(r) {
  const rec = S.pending.get(r.clientMessageId ?? "");
  if (!rec) return;
  S.pending.delete(rec.clientMessageId);
  rec.local = "rejected";
  rec.error = r.message || r.code || "";
  settleFiles(rec, false);
  const conv = S.convs.get(rec.conversationId);
  if (conv) conv.waitCache = undefined;
  refreshMessage(rec);
  if (conv) updateItem(conv);
  if (S.openId === rec.conversationId) $("#reply-error").textContent = t("delivery.rejected", { message: rec.error });
}

// ───────────────────────────── conversations and messages ─────────────────────────────

function upsertConv(c) {
  let conv = S.convs.get(c.id);
  if (!conv) {
    conv = {
      id: c.id,
      customerId: c.customerId ?? "",
      channel: channelOf(c.channel),
      status: convStatusOf(c.status),
      queueId: c.queueId ?? "",
      createTime: ts(c.createTime),
      updateTime: ts(c.updateTime),
      priority: Number(c.priority ?? 0),
      customerName: "",
      transferNote: "",
      windowClose: 0,
      records: new Map(),
      index: new Map(),
      typingUntil: 0,
      draft: "",
      /** The files of the next reply, and those of replies not answered yet. */
      files: [],
      itemEl: null,
      recentLoaded: false,
      waitCache: undefined,
      lastSms: null,
    };
    S.convs.set(c.id, conv);
  } else {
    if (c.customerId) conv.customerId = c.customerId;
    if (c.channel) conv.channel = channelOf(c.channel);
    if (c.status) conv.status = convStatusOf(c.status);
    if (c.queueId) conv.queueId = c.queueId;
    if (c.createTime) conv.createTime = ts(c.createTime);
    if (c.updateTime) conv.updateTime = ts(c.updateTime);
    if (c.priority !== undefined) conv.priority = Number(c.priority);
  }
  return conv;
}

/** A message as the desk keeps it. */
function makeRecord(m) {
  return {
    key: m.id,
    id: m.id ?? "",
    clientMessageId: "",
    conversationId: m.conversationId ?? "",
    customerId: m.customerId ?? "",
    channel: channelOf(m.channel),
    sender: senderOf(m.senderKind),
    operatorId: m.operatorId ?? "",
    text: m.text ?? "",
    subject: m.subject ?? "",
    quoted: m.quoted ?? null,
    attachments: m.attachments ?? [],
    template: m.template ?? null,
    time: ts(m.createTime),
    delivery: deliveryOf(m.deliveryState),
    failureReason: "",
    local: null,
    error: "",
    sms: null,
    el: null,
  };
}

/** Adds a message to a conversation once (by id, or an own reply by its clientMessageId). */
function addMessage(conv, m) {
  const id = m.id ?? "";
  let rec = id ? conv.index.get(id) : undefined;
  if (!rec && m.channelMessageId && senderOf(m.senderKind) === "operator") {
    rec = conv.index.get(`c:${m.channelMessageId}`);
    if (rec && id) {
      rec.id = id;
      conv.index.set(id, rec);
      if (rec.el) rec.el.dataset.messageId = id;
      // The recorded message proves it was accepted (the answer may still come, with the
      // SMS segments), so it is not sent again after a reconnect.
      if (rec.local === "sending" || rec.local === "queued") {
        rec.local = null;
        settleFiles(rec, true);
      }
    }
  }
  if (rec) {
    const fresh = makeRecord(m);
    if (!rec.text && fresh.text) rec.text = fresh.text;
    if (!rec.attachments.length && fresh.attachments.length) rec.attachments = fresh.attachments;
    if (!rec.subject) rec.subject = fresh.subject;
    if (!rec.quoted) rec.quoted = fresh.quoted;
    if (!rec.operatorId) rec.operatorId = fresh.operatorId;
    if (!rec.time) rec.time = fresh.time;
    applyDelivery(rec, fresh.delivery, "");
    return rec;
  }
  rec = makeRecord(m);
  if (!rec.id) rec.key = `x:${conv.records.size}:${rec.time}`;
  if (rec.sender === "operator" && rec.delivery === "unspecified") rec.delivery = "accepted";
  conv.records.set(rec.key, rec);
  if (rec.id) conv.index.set(rec.id, rec);
  if (rec.sender === "customer" && conv.channel === "CHANNEL_WHATSAPP" && rec.time) {
    conv.windowClose = Math.max(conv.windowClose, rec.time + 24 * 3600 * 1000);
  }
  const early = S.earlyDelivery.get(rec.id);
  if (early) {
    S.earlyDelivery.delete(rec.id);
    applyDelivery(rec, deliveryOf(early.state), early.failureReason ?? "");
  }
  conv.waitCache = undefined;
  return rec;
}

function sortedRecords(conv) {
  return [...conv.records.values()].sort((a, b) => a.time - b.time || (a.key < b.key ? -1 : 1));
}

/** When the customer's last message went unanswered (0 when the operator or a bot spoke last). */
function waitingSince(conv) {
  if (conv.waitCache !== undefined) return conv.waitCache;
  let since = 0;
  for (const rec of sortedRecords(conv)) {
    if (rec.sender === "customer") since = rec.time;
    else if ((rec.sender === "operator" || rec.sender === "bot") && rec.local !== "rejected") since = 0;
  }
  conv.waitCache = since;
  return since;
}

function lastActivity(conv) {
  let last = conv.updateTime || conv.createTime;
  for (const rec of conv.records.values()) last = Math.max(last, rec.time);
  return last;
}

function unreadCount(conv) {
  const seen = S.viewed[conv.id] ?? 0;
  let n = 0;
  for (const rec of conv.records.values()) if (rec.sender === "customer" && rec.time > seen) n++;
  return n;
}

function markViewed(conv) {
  let last = S.viewed[conv.id] ?? 0;
  let newest = null;
  for (const rec of conv.records.values()) {
    if (rec.sender !== "customer") continue;
    last = Math.max(last, rec.time);
    if (rec.id && (!newest || rec.time >= newest.time)) newest = rec;
  }
  if (last !== S.viewed[conv.id]) {
    S.viewed[conv.id] = last;
    saveJson(viewedKey(), S.viewed);
  }
  // The customer's side learns it was read (the web chat shows ✓✓), once per message.
  if (newest && conv.readSent !== newest.id && sendFrame({ read: { conversationId: conv.id, messageId: newest.id } })) {
    conv.readSent = newest.id;
  }
  updateItem(conv);
}

function pruneViewed() {
  if (!S.operatorId || !S.loaded) return;
  let changed = false;
  for (const id of Object.keys(S.viewed)) {
    if (!S.convs.has(id)) {
      delete S.viewed[id];
      changed = true;
    }
  }
  if (changed) saveJson(viewedKey(), S.viewed);
}

function customerName(customerId, conv) {
  const c = S.customers.get(customerId ?? "");
  if (c?.displayName) return c.displayName;
  if (conv?.customerName) return conv.customerName;
  const address = c?.identities?.[0]?.address;
  if (address) return address;
  return t("customer.unknown");
}

function ensureCustomer(customerId) {
  if (!customerId) return Promise.resolve(null);
  const known = S.customers.get(customerId);
  if (known?.promise) return known.promise;
  const entry = known ?? { displayName: "", identities: [], linked: [], full: null };
  const token = S.token;
  // History records a new customer a moment after routing offers their first conversation:
  // NOT_FOUND (or a service out of reach) is asked again soon, a few times, before the name
  // is left unknown for a while.
  const read = async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await api("history/GetCustomer", { customerId });
      } catch (e) {
        const passing = e.code === "NOT_FOUND" || e.status === 0 || e.status >= 500;
        if (!passing || attempt >= 5 || token !== S.token) throw e;
        await sleep(500 * 2 ** attempt);
      }
    }
  };
  entry.promise = read()
    .then((r) => {
      const c = r.customer ?? {};
      entry.displayName = c.displayName || entry.displayName;
      entry.identities = c.identities ?? [];
      entry.linked = c.linked ?? [];
      entry.full = c;
      return entry;
    })
    .catch(() => {
      // Not readable: the name stays unknown; try again later.
      setTimeout(() => {
        if (entry.promise) entry.promise = null;
      }, 30000);
      return entry;
    });
  S.customers.set(customerId, entry);
  return entry.promise;
}

function ensureQueues() {
  if (S.queuesPromise) return S.queuesPromise;
  S.queuesPromise = api("admin/ListQueues", {})
    .then((r) => {
      S.queues.clear();
      for (const q of r.queues ?? []) S.queues.set(q.id, q);
    })
    .catch(() => {
      S.queuesPromise = null;
    });
  return S.queuesPromise;
}

function queueName(id) {
  const q = S.queues.get(id);
  return q?.displayName || id || "—";
}

async function fetchConversation(id) {
  try {
    const r = await api("history/GetConversation", { conversationId: id });
    if (r.conversation && S.convs.has(id)) {
      const conv = upsertConv(r.conversation);
      ensureCustomer(conv.customerId).then(() => updateConvViews(conv));
      renderList();
    }
  } catch {
    // The list keeps what the events said.
  }
}

/** The newest messages of a conversation, for its unread count, waiting time and window. */
async function loadRecent(conv) {
  if (conv.recentLoaded) return;
  conv.recentLoaded = true;
  try {
    const r = await api("history/ListMessages", {
      conversationId: conv.id,
      pageSize: 50,
      order: "SORT_ORDER_NEWEST_FIRST",
    });
    if (S.convs.get(conv.id) !== conv) return;
    for (const m of r.messages ?? []) addMessage(conv, m);
    renderList();
    if (S.openId === conv.id) {
      renderMessages();
      updateWindowWarning();
    }
  } catch {
    conv.recentLoaded = false;
  }
}

/** Loads presence, my conversations and offers, my name; run on a fresh session or after a gap. */
async function loadState() {
  const gen = ++S.loadGen;
  S.touched = new Set();
  const [presence, list, me] = await Promise.allSettled([
    api("routing/GetOperatorPresence", { operatorId: "" }),
    api("routing/ListOperatorConversations", { operatorId: "" }),
    api("admin/GetOperator", { operatorId: S.operatorId }),
    ensureQueues(),
  ]);
  // Colleagues' names, for their messages in the history and their notes.
  loadDirectory().then(() => {
    if (S.view) rerenderMessages();
  });
  if (gen !== S.loadGen || S.stopped) return;
  if (presence.status === "fulfilled") {
    S.presence = presence.value.presence ?? null;
    renderPresence();
  }
  if (me.status === "fulfilled") {
    S.me = me.value.operator ?? null;
    S.operators.set(S.operatorId, S.me);
  }
  renderMe();
  if (list.status === "fulfilled") {
    const listed = list.value.conversations ?? [];
    const ids = new Set(listed.map((c) => c.id));
    // What the list does not have left while we were away (unless an event just brought it).
    for (const id of [...S.convs.keys()]) {
      if (!ids.has(id) && !S.touched.has(id)) onReleased({ conversationId: id, reason: "" });
    }
    for (const id of [...S.offers.keys()]) if (!ids.has(id) && !S.touched.has(id)) removeOffer(id);
    for (const c of listed) {
      if (S.touched.has(c.id)) continue;
      const status = convStatusOf(c.status);
      if (status === "offered") {
        if (!S.offers.has(c.id)) {
          // The list carries no deadline: estimate it from the queue's offer timeout.
          const timeout = durSeconds(S.queues.get(c.queueId)?.offerTimeout);
          const start = ts(c.updateTime);
          const expireAt = timeout && start ? start + timeout * 1000 : 0;
          S.offers.set(c.id, { conversation: c, expireAt, startAt: start, busy: false, el: null, error: "", estimated: true });
          ensureCustomer(c.customerId).then(() => renderOffers());
        }
      } else if (status === "assigned") {
        removeOffer(c.id);
        const conv = upsertConv(c);
        ensureCustomer(conv.customerId).then(() => updateConvViews(conv));
        loadRecent(conv);
      }
    }
    renderOffers();
    renderList();
    pruneViewed();
  } else {
    notice(t("error.generic", { message: list.reason?.message ?? "" }));
  }
  S.loaded = true;
  if (S.focusListOnLoad && !S.convs.size && document.activeElement === document.body) $("#status").focus();
  S.focusListOnLoad = false;
  if (S.openId && S.convs.has(S.openId)) openConversation(S.openId, { refresh: true });
  else if (S.openId) closeView();
  probeSupervisor().then((ok) => {
    $("#tab-supervisor").hidden = !ok;
    $("#tabs").hidden = !ok;
  });
}

async function probeSupervisor() {
  try {
    await api("routing/ListOperatorPresences", {});
    S.isSupervisor = true;
  } catch {
    S.isSupervisor = false;
  }
  return S.isSupervisor;
}

// ───────────────────────────── rendering: header, presence ─────────────────────────────

function renderMe() {
  $("#me-name").textContent = S.supervisorOnly ? "" : S.me?.displayName || S.operatorId || t("me.unknown");
}

function renderPresence() {
  const p = S.presence;
  const status = p ? statusOf(p.status) : "unknown";
  const select = $("#status");
  if (status !== "unknown" && S.statusBusy === null) select.value = status;
  const reason = p?.reason ?? "";
  const input = $("#away-reason");
  if (status === "away" && document.activeElement !== input && S.statusBusy === null) input.value = reason;
  const el = $("#status-current");
  el.dataset.status = status;
  el.textContent =
    status === "away" && reason
      ? t("status.currentAway", { reason })
      : t("status.current", { status: t(`status.${status}`) });
}

async function setStatus(value) {
  const reason = $("#away-reason").value.trim();
  if (value === "away" && !reason) {
    notice(t("status.reasonRequired"));
    $("#away-reason").focus();
    return;
  }
  const key = `${value}|${value === "away" ? reason : ""}`;
  if (S.statusBusy === key) return;
  const p = S.presence;
  if (S.statusBusy === null && p && statusOf(p.status) === value && (value !== "away" || (p.reason ?? "") === reason)) return;
  S.statusBusy = key;
  try {
    const r = await api("routing/SetOperatorStatus", {
      operatorId: "",
      status: `OPERATOR_STATUS_${value.toUpperCase()}`,
      reason: value === "away" ? reason : "",
    });
    S.presence = r.presence ?? S.presence;
  } catch (e) {
    notice(t("error.generic", { message: e.message }));
  } finally {
    S.statusBusy = null;
    renderPresence();
  }
}

async function refreshPresence() {
  if (S.stopped || S.supervisorOnly) return;
  try {
    const r = await api("routing/GetOperatorPresence", { operatorId: "" });
    S.presence = r.presence ?? S.presence;
    renderPresence();
  } catch {
    // Shown again on the next poll.
  }
}

// ───────────────────────────── rendering: offers ─────────────────────────────

function removeOffer(id) {
  const o = S.offers.get(id);
  if (!o) return;
  S.offers.delete(id);
  o.el?.remove();
  $("#offers-none").hidden = S.offers.size > 0;
}

function renderOffers() {
  const box = $("#offers");
  for (const [id, o] of S.offers) {
    if (!o.el) buildOffer(id, o, box);
    updateOffer(o);
  }
  $("#offers-none").hidden = S.offers.size > 0;
  tickOffers();
}

/** An offer's card, built once (so keyboard focus on its buttons survives updates). */
function buildOffer(id, o, box) {
  const c = o.conversation;
  o.el = h("article", { class: "offer", "data-testid": "offer", "data-conversation-id": id });
  o.nameEl = h("span", { class: "offer-name", "data-testid": "offer-customer" });
  o.iconEl = h("span", {}, channelIcon(c.channel));
  o.queueEl = h("div", { class: "small muted", "data-testid": "offer-queue" });
  o.fillEl = h("div", { class: "offer-bar-fill" });
  o.countdownEl = h("div", { class: "offer-countdown", "data-testid": "offer-countdown", role: "timer" });
  o.errorEl = h("p", { class: "error", role: "alert" });
  o.acceptEl = h("button", { type: "button", "data-testid": "offer-accept" });
  o.declineEl = h("button", { type: "button", class: "secondary", "data-testid": "offer-decline" });
  o.acceptEl.addEventListener("click", () => acceptOffer(id));
  o.declineEl.addEventListener("click", () => declineOffer(id));
  o.el.append(
    h("div", { class: "offer-head" }, o.iconEl, o.nameEl),
    o.queueEl,
    h("div", { class: "offer-bar", "aria-hidden": "true" }, o.fillEl),
    o.countdownEl,
    o.errorEl,
    h("div", { class: "offer-actions" }, o.acceptEl, o.declineEl),
  );
  box.append(o.el);
}

function updateOffer(o) {
  const c = o.conversation;
  const name = customerName(c.customerId);
  o.el.setAttribute("aria-label", t("offer.label", { name }));
  o.nameEl.textContent = name;
  o.iconEl.replaceChildren(channelIcon(c.channel));
  o.queueEl.textContent = t("offer.queue", { queue: queueName(c.queueId) });
  o.errorEl.textContent = o.error;
  o.acceptEl.textContent = t("offer.accept");
  o.declineEl.textContent = t("offer.decline");
  o.acceptEl.disabled = o.declineEl.disabled = o.busy;
}

function tickOffers() {
  const now = serverNow();
  for (const [id, o] of S.offers) {
    if (!o.countdownEl) continue;
    if (!o.expireAt) {
      o.countdownEl.textContent = t("offer.expiresUnknown");
      continue;
    }
    const left = (o.expireAt - now) / 1000;
    if (left <= 0 && !o.busy) {
      removeOffer(id);
      continue;
    }
    o.countdownEl.textContent = t("offer.expiresIn", { time: fmtElapsed(Math.ceil(Math.max(0, left))) });
    o.countdownEl.classList.toggle("urgent", left <= 10);
    const total = Math.max(1, o.expireAt - o.startAt);
    o.fillEl.style.width = `${Math.max(0, Math.min(100, ((o.expireAt - now) / total) * 100))}%`;
  }
}

async function acceptOffer(id) {
  const o = S.offers.get(id);
  if (!o || o.busy) return;
  o.busy = true;
  o.error = "";
  renderOffers();
  try {
    const r = await api("routing/AcceptOffer", { conversationId: id });
    removeOffer(id);
    const conv = upsertConv(r.conversation ?? o.conversation);
    conv.status = "assigned";
    ensureCustomer(conv.customerId).then(() => updateConvViews(conv));
    loadRecent(conv);
    renderList();
    openConversation(conv.id, { focusComposer: true });
  } catch (e) {
    o.busy = false;
    if (["NOT_FOUND", "FAILED_PRECONDITION", "ABORTED"].includes(e.code)) {
      removeOffer(id);
      notice(t("offer.acceptFailed", { message: e.message }));
    } else {
      o.error = t("offer.acceptFailed", { message: e.message });
      renderOffers();
    }
  }
}

async function declineOffer(id) {
  const o = S.offers.get(id);
  if (!o || o.busy) return;
  o.busy = true;
  renderOffers();
  try {
    await api("routing/DeclineOffer", { conversationId: id });
    removeOffer(id);
  } catch (e) {
    o.busy = false;
    if (["NOT_FOUND", "FAILED_PRECONDITION"].includes(e.code)) removeOffer(id);
    else {
      o.error = t("offer.declineFailed", { message: e.message });
      renderOffers();
    }
  }
}

// ───────────────────────────── rendering: conversation list ─────────────────────────────

function listOrder() {
  return [...S.convs.values()].sort((a, b) => {
    const wa = waitingSince(a);
    const wb = waitingSince(b);
    if (wa && wb) return wa - wb;
    if (wa || wb) return wa ? -1 : 1;
    return lastActivity(b) - lastActivity(a);
  });
}

function renderList() {
  const ul = $("#conversation-list");
  const order = listOrder();
  const focusedId = document.activeElement?.closest?.("[data-testid=conversation-item]")?.dataset.conversationId;
  const tabId = S.openId && S.convs.has(S.openId) ? S.openId : focusedId || order[0]?.id;
  order.forEach((conv, i) => {
    if (!conv.itemEl) buildItem(conv);
    updateItem(conv);
    conv.itemEl.tabIndex = conv.id === tabId ? 0 : -1;
    const li = conv.itemEl.parentElement;
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] ?? null);
  });
  while (ul.children.length > order.length) ul.lastElementChild.remove();
  $("#list-none").hidden = order.length > 0;
  if (S.focusListOnLoad && order.length && document.activeElement === document.body) {
    // Just signed in: the keyboard starts in the conversation list.
    S.focusListOnLoad = false;
    order[0].itemEl.focus();
  }
  if (focusedId && S.convs.get(focusedId)?.itemEl && document.activeElement !== S.convs.get(focusedId).itemEl) {
    S.convs.get(focusedId).itemEl.focus();
  }
}

function buildItem(conv) {
  const btn = h("button", {
    type: "button",
    class: "conv-item",
    "data-testid": "conversation-item",
    "data-conversation-id": conv.id,
  });
  btn.addEventListener("click", () => openConversation(conv.id, { focusComposer: false }));
  const li = h("li", {}, btn);
  conv.itemEl = btn;
  return li;
}

function updateItem(conv) {
  const btn = conv.itemEl;
  if (!btn) return;
  const name = customerName(conv.customerId, conv);
  const unread = unreadCount(conv);
  const since = waitingSince(conv);
  const typing = conv.typingUntil > Date.now();
  const waitSec = since ? (serverNow() - since) / 1000 : 0;
  btn.setAttribute("aria-current", S.openId === conv.id ? "true" : "false");
  btn.dataset.channel = conv.channel;
  // Rebuilt only when what it shows changed (it is called every second for the waiting time).
  const sig = [name, unread, since, typing, conv.channel, lang()].join("|");
  if (btn.dataset.sig !== sig) {
    btn.dataset.sig = sig;
    conv.waitEl = h("span", { class: "waiting", "data-testid": "waiting" });
    btn.replaceChildren(
      channelIcon(conv.channel),
      h("span", { class: "conv-item-name", "data-testid": "conversation-name", text: name }),
      h("span", { class: "unread", "data-testid": "unread", "data-count": unread, "aria-hidden": "true", text: String(unread) }),
      h(
        "span",
        { class: "conv-item-meta" },
        unread ? h("span", { class: "visually-hidden", text: t("list.unread", { n: unread }) }) : null,
        h("span", { text: t(`channel.${conv.channel}`) }),
        since ? conv.waitEl : null,
        typing ? h("span", { text: t("list.typing") }) : null,
      ),
    );
  }
  if (since && conv.waitEl) {
    conv.waitEl.textContent = t("list.waiting", { time: fmtElapsed(waitSec) });
    conv.waitEl.classList.toggle("long", waitSec > 300);
  }
}

function updateConvViews(conv) {
  updateItem(conv);
  if (S.openId === conv.id) {
    renderConversationHeader();
    renderInfo();
    for (const rec of conv.records.values()) if (rec.sender === "customer" && rec.el) refreshMessage(rec, true);
  }
}

function onListKey(e) {
  const items = [...$("#conversation-list").querySelectorAll("[data-testid=conversation-item]")];
  const i = items.indexOf(document.activeElement);
  if (i < 0) return;
  let next = -1;
  if (e.key === "ArrowDown") next = Math.min(items.length - 1, i + 1);
  else if (e.key === "ArrowUp") next = Math.max(0, i - 1);
  else if (e.key === "Home") next = 0;
  else if (e.key === "End") next = items.length - 1;
  else return;
  e.preventDefault();
  items.forEach((el, j) => (el.tabIndex = j === next ? 0 : -1));
  items[next].focus();
}

// ───────────────────────────── the open conversation ─────────────────────────────

function openConversation(id, { focusComposer = false, refresh = false } = {}) {
  const conv = S.convs.get(id);
  if (!conv) return;
  const ta = $("#reply-text");
  if (S.openId && S.openId !== id) {
    const prev = S.convs.get(S.openId);
    if (prev) prev.draft = ta.value;
  }
  const changed = S.openId !== id;
  S.openId = id;
  if (changed || refresh || !S.view) {
    S.view = {
      convId: id,
      customerId: conv.customerId,
      history: new Map(),
      convMeta: new Map(),
      seps: new Map(),
      nextToken: "",
      loading: false,
      notes: [],
    };
    $("#messages").replaceChildren();
    for (const rec of conv.records.values()) rec.el = null;
    if (changed) {
      ta.value = conv.draft ?? "";
      $("#reply-error").textContent = "";
      $("#conv-error").textContent = "";
      $("#note-error").textContent = "";
    }
  }
  $("#conversation-empty").hidden = true;
  $("#conversation-view").hidden = false;
  $("#info-content").hidden = false;
  renderConversationHeader();
  renderInfo();
  renderMessages({ toBottom: true });
  updateComposerExtras();
  updateTyping();
  for (const c of S.convs.values()) updateItem(c);
  markViewed(conv);
  renderList();
  if (changed || refresh) {
    // The history arrives in bulk: the live region announces only what comes after it.
    $("#messages").setAttribute("aria-busy", "true");
    loadTimeline(S.view, { more: false });
    loadNotes(S.view);
    ensureCustomer(conv.customerId).then(() => {
      if (S.openId === id) {
        renderConversationHeader();
        renderInfo();
      }
    });
  }
  if (focusComposer) ta.focus();
}

function closeView() {
  S.openId = "";
  S.view = null;
  $("#conversation-view").hidden = true;
  $("#conversation-empty").hidden = false;
  $("#info-content").hidden = true;
  $("#messages").replaceChildren();
  $("#info-body").replaceChildren();
  $("#notes-list").replaceChildren();
  $("#customer-info").classList.remove("open");
  $("#info-toggle").setAttribute("aria-expanded", "false");
  if (document.activeElement === document.body || !document.activeElement) $("#conversation").focus();
  renderList();
}

function renderConversationHeader() {
  const conv = S.convs.get(S.openId);
  if (!conv) return;
  $("#conv-icon").replaceChildren(channelIcon(conv.channel));
  $("#conv-name").textContent = customerName(conv.customerId, conv);
  $("#conv-channel").textContent = t("conv.channel", { channel: t(`channel.${conv.channel}`) });
  $("#conv-id").textContent = t("conv.id", { id: conv.id });
}

function renderInfo() {
  const conv = S.convs.get(S.openId);
  if (!conv) return;
  const cust = S.customers.get(conv.customerId);
  const dl = h("dl");
  const row = (label, ...value) => dl.append(h("dt", { text: label }), h("dd", {}, ...value));
  row(t("info.name"), customerName(conv.customerId, conv));
  row(t("info.customerId"), h("span", { class: "mono", text: conv.customerId || "—" }));
  const ids = cust?.identities ?? [];
  if (ids.length) {
    row(
      t("info.identities"),
      h(
        "ul",
        {},
        ids.map((i) => h("li", {}, `${t(`channel.${channelOf(i.channel)}`)}: `, h("span", { class: "mono", text: i.address ?? "" }))),
      ),
    );
  }
  const linked = cust?.linked ?? [];
  if (linked.length) {
    row(t("info.linked"), h("ul", {}, linked.map((l) => h("li", { class: "mono", text: `${l.customerId ?? ""} (${l.reason ?? ""})` }))));
  }
  row(t("info.queue"), queueName(conv.queueId));
  if (conv.priority) row(t("info.priority"), String(conv.priority));
  if (conv.createTime) row(t("info.started"), fmtDateTime(conv.createTime));
  const body = [dl];
  if (conv.transferNote) {
    body.push(h("h3", { text: t("info.transferNote") }), h("p", { class: "transfer-note", "data-testid": "transfer-note", text: conv.transferNote }));
  }
  $("#info-body").replaceChildren(...body);
}

async function loadTimeline(view, { more }) {
  if (view.loading) return;
  const conv = S.convs.get(view.convId);
  if (!conv) return;
  view.loading = true;
  const status = $("#history-status");
  status.textContent = t("history.loading");
  $("#history-more").hidden = true;
  try {
    if (!view.customerId) throw new ApiError(0, "NO_CUSTOMER", "");
    let pages = 0;
    let reachedOlder = false;
    do {
      const r = await api("history/GetCustomerTimeline", {
        customerId: view.customerId,
        pageSize: 100,
        pageToken: view.nextToken,
      });
      if (S.view !== view) return;
      for (const c of r.conversations ?? []) view.convMeta.set(c.id, c);
      for (const m of r.messages ?? []) {
        if (m.conversationId === view.convId) addMessage(conv, m);
        else {
          reachedOlder = true;
          if (m.id && !view.history.has(m.id)) view.history.set(m.id, makeRecord(m));
        }
      }
      view.nextToken = r.nextPageToken ?? "";
      pages++;
      // The first screen pages on until the whole current conversation is in.
    } while (!more && view.nextToken && !reachedOlder && pages < 10);
    status.textContent = "";
  } catch (e) {
    if (S.view !== view) return;
    // Without the timeline, at least this conversation's own messages.
    try {
      const r = await api("history/ListMessages", { conversationId: view.convId, pageSize: 500, order: "SORT_ORDER_OLDEST_FIRST" });
      if (S.view !== view) return;
      for (const m of r.messages ?? []) addMessage(conv, m);
      status.textContent = e.code === "NO_CUSTOMER" ? "" : t("history.failed", { message: e.message });
    } catch (e2) {
      if (S.view !== view) return;
      status.textContent = t("history.failed", { message: e2.message });
    }
  } finally {
    view.loading = false;
  }
  if (S.view !== view) return;
  $("#history-more").hidden = !view.nextToken;
  renderMessages({ keepAnchor: more, toBottom: !more });
  $("#messages").setAttribute("aria-busy", "false");
  renderList();
  updateWindowWarning();
  if (S.openId === conv.id && document.visibilityState === "visible") markViewed(conv);
}

/** The separator heading a conversation's messages. */
function separatorFor(view, convId, firstRec) {
  let sep = view.seps.get(convId);
  if (!sep) {
    sep = h("div", { class: "separator", role: "separator", "data-testid": "history-separator", "data-conversation-id": convId });
    view.seps.set(convId, sep);
  }
  const meta = view.convMeta.get(convId);
  const conv = S.convs.get(convId);
  const channel = conv?.channel ?? channelOf(meta?.channel ?? firstRec?.channel);
  const date = conv?.createTime || ts(meta?.createTime) || firstRec?.time || 0;
  const key = convId === view.convId ? "history.current" : "history.earlier";
  sep.textContent = t(key, { channel: t(`channel.${channel}`), date: fmtDate(date) });
  return sep;
}

/** Lays out the open conversation: earlier conversations (oldest first), then this one. */
function renderMessages({ toBottom = false, keepAnchor = false } = {}) {
  const view = S.view;
  const conv = S.convs.get(S.openId);
  if (!view || !conv) return;
  const box = $("#messages");
  const scroller = $("#messages-scroll");
  const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  const heightBefore = scroller.scrollHeight;

  const groups = new Map();
  for (const rec of view.history.values()) {
    if (rec.conversationId === view.convId) continue;
    if (!groups.has(rec.conversationId)) groups.set(rec.conversationId, []);
    groups.get(rec.conversationId).push(rec);
  }
  const byTime = (a, b) => a.time - b.time || (a.key < b.key ? -1 : 1);
  const earlier = [...groups.entries()]
    .map(([id, recs]) => [id, recs.sort(byTime)])
    .sort((a, b) => a[1][0].time - b[1][0].time);
  const current = sortedRecords(conv);

  const nodes = [];
  for (const [id, recs] of earlier) {
    nodes.push(separatorFor(view, id, recs[0]));
    for (const rec of recs) nodes.push(messageEl(rec, true));
  }
  if (earlier.length || current.length) nodes.push(separatorFor(view, view.convId, current[0]));
  for (const rec of current) nodes.push(messageEl(rec, false));
  if (!nodes.length && !view.loading) nodes.push(h("p", { class: "muted", text: t("history.empty") }));

  // Only what is new or moved is touched, so the live region announces just the additions.
  nodes.forEach((node, i) => {
    if (box.children[i] !== node) box.insertBefore(node, box.children[i] ?? null);
  });
  while (box.children.length > nodes.length) box.lastElementChild.remove();

  if (keepAnchor) scroller.scrollTop += scroller.scrollHeight - heightBefore;
  else if (toBottom || nearBottom) scroller.scrollTo({ top: scroller.scrollHeight, behavior: "auto" });
}

function authorLabel(rec) {
  switch (rec.sender) {
    case "customer":
      return customerName(rec.customerId || S.convs.get(rec.conversationId)?.customerId, S.convs.get(rec.conversationId));
    case "operator":
      if (!rec.operatorId || rec.operatorId === S.operatorId) return t("sender.me");
      return S.operators.get(rec.operatorId)?.displayName || rec.operatorId;
    case "bot":
      return t("sender.bot");
    case "system":
      return t("sender.system");
    default:
      return t("sender.customer");
  }
}

function messageEl(rec, earlier) {
  if (!rec.el) buildMessage(rec, earlier);
  return rec.el;
}

function buildMessage(rec, earlier) {
  const el = h("article", {
    class: `msg${earlier ? " earlier" : ""}`,
    "data-testid": "message",
    "data-message-id": rec.id,
    "data-sender": rec.sender === "unspecified" ? "system" : rec.sender,
    "data-conversation-id": rec.conversationId,
  });
  if (rec.clientMessageId) el.dataset.clientMessageId = rec.clientMessageId;
  rec.el = el;
  fillMessage(rec);
  return el;
}

/** (Re)writes a message's element from its record. */
function fillMessage(rec) {
  const el = rec.el;
  const parts = [];
  const time = rec.time ? h("time", { datetime: new Date(rec.time).toISOString(), text: fmtTime(rec.time) }) : null;
  parts.push(h("div", { class: "msg-meta" }, h("span", { class: "msg-author", text: authorLabel(rec) }), time));
  if (rec.subject) parts.push(h("div", { class: "msg-subject", "data-testid": "message-subject", text: t("msg.subject", { subject: rec.subject }) }));
  if (rec.quoted && (rec.quoted.text || rec.quoted.messageId || rec.quoted.channelMessageId)) {
    parts.push(
      h(
        "blockquote",
        { class: "msg-quote", "data-testid": "message-quote" },
        h("span", { class: "msg-quote-label", text: t("msg.quoted") }),
        rec.quoted.text ?? "",
      ),
    );
  }
  parts.push(h("div", { class: "msg-text", "data-testid": "message-text", text: rec.text }));
  if (rec.template?.name) parts.push(h("div", { class: "msg-template", text: t("msg.template", { name: rec.template.name }) }));
  if (rec.attachments.length) {
    if (!rec.attEl) rec.attEl = buildAttachments(rec);
    parts.push(rec.attEl);
  }
  if (rec.sender === "operator") {
    rec.deliveryEl = h("div", { class: "delivery", "data-testid": "delivery" });
    parts.push(rec.deliveryEl);
    if (rec.sms) {
      parts.push(h("div", { class: "msg-sms", "data-testid": "message-sms-segments", text: t("msg.smsSegments", { segments: plural("segment", rec.sms.segments), encoding: rec.sms.encoding }) }));
    }
  }
  el.replaceChildren(...parts);
  updateDelivery(rec);
}

/** Rewrites every shown message (names or language changed). */
function rerenderMessages() {
  if (!S.view) return;
  const conv = S.convs.get(S.openId);
  for (const rec of conv?.records.values() ?? []) if (rec.el) fillMessage(rec);
  for (const rec of S.view.history.values()) if (rec.el) fillMessage(rec);
  renderNotes();
}

function refreshMessage(rec) {
  if (!rec.el) return;
  if (rec.id) rec.el.dataset.messageId = rec.id;
  fillMessage(rec);
}

function refreshPendingViews() {
  for (const rec of S.pending.values()) refreshMessage(rec);
}

function updateDelivery(rec) {
  const el = rec.deliveryEl;
  if (!el || !rec.el?.contains(el)) return;
  let state = rec.local ?? rec.delivery;
  if (state === "unspecified") state = "accepted";
  el.dataset.state = state;
  rec.el.dataset.delivery = state;
  let text;
  if (state === "rejected") text = t("delivery.rejected", { message: rec.error });
  else if (state === "failed") text = rec.failureReason ? t("delivery.failed", { reason: rec.failureReason }) : t("delivery.failedNoReason");
  else text = t(`delivery.${state}`);
  el.textContent = text;
}

// ───────────────────────────── attachments ─────────────────────────────

/** Blob URLs of fetched files, by attachment id (a promise while fetching). */
const files = new Map();
const RASTER = /^image\/(png|jpe?g|gif|webp|bmp|avif)$/i;

async function fetchFile(id, attempt = 0) {
  const token = S.token;
  let res;
  try {
    res = await fetch(`/desk/files/${encodeURIComponent(id)}`, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    // The network is down (a reply written offline shows its files at once): try again soon.
    if (attempt < 4 && token === S.token) {
      await sleep(2000 * (attempt + 1));
      return fetchFile(id, attempt + 1);
    }
    throw new Error("failed");
  }
  if (res.status === 404) {
    // Not there yet: a file is fetched from the provider after its message arrives (the
    // gateway answers NOT_FOUND until then; ingest's own endpoint says `"pending": true`).
    let body = {};
    try {
      body = await res.json();
    } catch {
      body = {};
    }
    if (body.pending !== false && attempt < 4 && token === S.token) {
      await sleep(2000 * (attempt + 1));
      return fetchFile(id, attempt + 1);
    }
    throw new Error("pending");
  }
  if (!res.ok) throw new Error("failed");
  const blob = await res.blob();
  const image = RASTER.test(blob.type);
  // Anything but a raster image is handed out as opaque bytes, so a blob: URL opened in a tab
  // can never render as a page of this origin.
  const safe = image ? blob : new Blob([blob], { type: "application/octet-stream" });
  return { url: URL.createObjectURL(safe), image };
}

function getFile(id) {
  if (!files.has(id)) {
    const p = fetchFile(id).catch((e) => {
      files.delete(id);
      throw e;
    });
    files.set(id, p);
  }
  return files.get(id);
}

const fileObserver =
  typeof window !== "undefined" && "IntersectionObserver" in window
    ? new IntersectionObserver(
        (entries) => {
          for (const e of entries) {
            if (e.isIntersecting) {
              fileObserver.unobserve(e.target);
              e.target.dispatchEvent(new Event("parley-load"));
            }
          }
        },
        { rootMargin: "300px" },
      )
    : null;

function buildAttachments(rec) {
  const box = h("div", { class: "msg-attachments", "aria-label": t("msg.attachments"), role: "group" });
  for (const a of rec.attachments) {
    const id = a.id ?? "";
    const kind = attachmentKindOf(a.kind);
    const name = a.fileName || t("msg.fileUnnamed");
    const size = Number(a.sizeBytes ?? 0);
    const label = size ? t("msg.file", { name, size: fmtSize(size) }) : t("msg.fileNoSize", { name });
    const wantImage = kind === "image" || kind === "sticker" || /^image\//i.test(a.mimeType ?? "");
    const slot = h(
      "div",
      { class: "attachment-file", "data-testid": "attachment", "data-attachment-id": id },
      h("span", { text: label }),
      " ",
      h("span", { class: "muted small", text: t("msg.fileLoading") }),
    );
    const load = () => {
      getFile(id).then(
        ({ url, image }) => {
          if (wantImage && image) {
            slot.replaceChildren(h("img", { src: url, alt: t("msg.image", { name }), "data-testid": "attachment-image", loading: "lazy" }));
          } else {
            const link = h("a", { download: a.fileName || "file", "data-testid": "attachment-link", text: label });
            link.href = url;
            slot.replaceChildren(link);
          }
        },
        (e) => {
          const retry = h("button", { type: "button", class: "link-button", text: t("msg.fileRetry") });
          retry.addEventListener("click", () => {
            slot.replaceChildren(h("span", { text: label }), " ", h("span", { class: "muted small", text: t("msg.fileLoading") }));
            load();
          });
          slot.replaceChildren(
            h("span", { text: label }),
            " ",
            h("span", { class: "muted small", text: e.message === "pending" ? t("msg.filePending") : t("msg.fileFailed") }),
            " ",
            retry,
          );
        },
      );
    };
    if (!id) continue;
    if (fileObserver) {
      slot.addEventListener("parley-load", load, { once: true });
      fileObserver.observe(slot);
    } else load();
    box.append(slot);
  }
  return box;
}

function revokeFiles() {
  for (const p of files.values()) p.then(({ url }) => URL.revokeObjectURL(url), () => {});
  files.clear();
}

// ───────────────────────────── files of a reply ─────────────────────────────
//
// Each file chosen (the Attach button, a drop on the composer, a paste) is uploaded at once
// with `POST /desk/files?name=…` (the raw bytes, its type as Content-Type); the answer's id
// goes into the reply's attachmentIds. A conversation keeps its files like its draft. Files
// sent with a reply stay in the composer, locked, until the reply is accepted (then they go)
// or rejected (then they can be sent again).

/** How many files a reply may carry, per channel (the server checks too). */
const MAX_FILES = {
  CHANNEL_TELEGRAM: 1,
  CHANNEL_WHATSAPP: 1,
  CHANNEL_VIBER: 1,
  CHANNEL_SMS: 10,
  CHANNEL_WEBCHAT: 10,
  CHANNEL_EMAIL: 20,
  CHANNEL_API: 20,
};
const maxFiles = (channel) => MAX_FILES[channel] ?? 20;

let fileSeq = 0;
/** Uploads under way, so signing out can stop them. */
const uploads = new Set();

/** The files of the conversation's next reply (not those locked by a reply on its way). */
const draftFiles = (conv) => conv.files.filter((f) => !f.sentWith);

/** Adds files to the open conversation's next reply and starts their uploads. */
function addFiles(list) {
  const conv = S.convs.get(S.openId);
  const files = [...(list ?? [])];
  if (!conv || !files.length) return;
  const max = maxFiles(conv.channel);
  const room = Math.max(0, max - draftFiles(conv).length);
  const errors = [];
  if (files.length > room) {
    errors.push(t("attach.tooMany", { channel: t(`channel.${conv.channel}`), files: plural("fileMax", max) }));
  }
  for (const file of files.slice(0, room)) uploadFile(conv, file);
  $("#reply-error").textContent = errors.join(" ");
  renderAttachList();
}

function uploadFile(conv, file) {
  const item = {
    key: `f${++fileSeq}`,
    name: file.name || t("msg.fileUnnamed"),
    size: file.size,
    mime: file.type || "application/octet-stream",
    kind: "",
    id: "",
    state: "uploading",
    progress: 0,
    sentWith: "",
    xhr: null,
    el: null,
  };
  conv.files.push(item);
  const xhr = new XMLHttpRequest();
  item.xhr = xhr;
  uploads.add(xhr);
  const token = S.token;
  const done = () => {
    uploads.delete(xhr);
    item.xhr = null;
  };
  const failed = (message) => {
    done();
    if (item.state === "removed" || token !== S.token) return;
    conv.files = conv.files.filter((f) => f !== item);
    const text = t("attach.failed", { name: item.name, message });
    if (S.openId === conv.id) {
      $("#reply-error").textContent = text;
      renderAttachList();
    } else notice(text);
  };
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable || !e.total) return;
    item.progress = e.loaded / e.total;
    updateChipProgress(item);
  });
  xhr.addEventListener("load", () => {
    let json = null;
    try {
      json = xhr.responseText ? JSON.parse(xhr.responseText) : null;
    } catch {
      json = null;
    }
    if (xhr.status < 200 || xhr.status > 299 || !json?.id) {
      // Ingest answers {"error": {"code", "message"}}; the desk's gateway {"code", "message"}.
      const err = json?.error && typeof json.error === "object" ? json.error : json ?? {};
      const message =
        (typeof err.message === "string" && err.message) ||
        (xhr.status === 413 ? t("attach.tooLarge") : "") ||
        (typeof err.code === "string" && err.code) ||
        (xhr.status ? t("attach.httpError", { status: xhr.status }) : t("error.network"));
      failed(message);
      return;
    }
    done();
    if (item.state === "removed" || token !== S.token) return;
    item.id = String(json.id);
    item.kind = String(json.kind ?? "");
    item.mime = json.mime_type || item.mime;
    item.name = json.file_name || item.name;
    item.size = Number(json.size_bytes ?? item.size);
    item.state = "ready";
    item.progress = 1;
    if (S.openId === conv.id) {
      renderAttachList();
      announce(t("attach.uploaded", { name: item.name }));
    }
  });
  xhr.addEventListener("error", () => failed(t("error.network")));
  xhr.addEventListener("abort", () => done());
  xhr.open("POST", `/desk/files?name=${encodeURIComponent(item.name)}`);
  xhr.setRequestHeader("Authorization", `Bearer ${token}`);
  xhr.setRequestHeader("Content-Type", item.mime);
  xhr.send(file);
}

/** Takes a file out of the next reply (stopping its upload). */
function removeFile(conv, item) {
  if (item.sentWith) return;
  item.state = "removed";
  item.xhr?.abort();
  const list = draftFiles(conv);
  const i = list.indexOf(item);
  conv.files = conv.files.filter((f) => f !== item);
  renderAttachList();
  announce(t("attach.removed", { name: item.name }));
  // The keyboard stays in the list: on the next file's remove button, or back on Attach.
  const rest = draftFiles(conv);
  const next = rest[Math.min(i, rest.length - 1)];
  (next?.el?.querySelector(".attach-remove") ?? $("#attach-open")).focus();
}

/** Stops every upload (signing out, or the conversation left). */
function abortUploads(conv) {
  for (const item of conv ? conv.files : []) {
    item.state = "removed";
    item.xhr?.abort();
  }
  if (!conv) for (const xhr of [...uploads]) xhr.abort();
}

function updateChipProgress(item) {
  if (!item.el || item.state !== "uploading") return;
  const percent = Math.round(item.progress * 100);
  const bar = item.el.querySelector("progress");
  if (bar) bar.value = percent;
  const state = item.el.querySelector(".attach-state");
  if (state) state.textContent = t("attach.uploading", { percent });
}

function buildChip(conv, item) {
  const percent = Math.round(item.progress * 100);
  const uploading = item.state === "uploading";
  const li = h(
    "li",
    {
      class: "attach-chip",
      "data-testid": "attachment-chip",
      "data-state": item.sentWith ? "sending" : item.state,
      "data-attachment-id": item.id || undefined,
    },
    h("span", { class: "attach-name", "data-testid": "attachment-chip-name", text: item.name }),
    h("span", { class: "attach-size muted small", text: fmtSize(item.size) }),
    uploading ? h("progress", { max: "100", value: String(percent), "aria-label": t("attach.uploadingLabel", { name: item.name }) }) : null,
    uploading || item.sentWith
      ? h("span", { class: "attach-state muted small", text: uploading ? t("attach.uploading", { percent }) : t("attach.sending") })
      : null,
  );
  if (!item.sentWith) {
    const remove = h("button", {
      type: "button",
      class: "attach-remove secondary",
      "data-testid": "attachment-remove",
      "aria-label": t(uploading ? "attach.cancel" : "attach.remove", { name: item.name }),
      title: t(uploading ? "attach.cancel" : "attach.remove", { name: item.name }),
    });
    remove.append(h("span", { "aria-hidden": "true", text: "×" }));
    remove.addEventListener("click", () => removeFile(conv, item));
    li.append(remove);
  }
  item.el = li;
  return li;
}

/** Shows the open conversation's files and sets what depends on them. */
function renderAttachList() {
  const conv = S.convs.get(S.openId);
  const ul = $("#attach-list");
  const files = conv?.files ?? [];
  const focused = document.activeElement && ul.contains(document.activeElement) ? document.activeElement.closest("li") : null;
  const focusKey = focused ? files.find((f) => f.el === focused)?.key : "";
  for (const f of files) f.el = null;
  ul.replaceChildren(...files.map((f) => buildChip(conv, f)));
  ul.hidden = !files.length;
  if (focusKey) files.find((f) => f.key === focusKey)?.el?.querySelector("button")?.focus();
  const uploading = files.some((f) => !f.sentWith && f.state === "uploading");
  $("#reply-send").disabled = uploading;
  if (conv) {
    $("#attach-hint").textContent = t("attach.hint", {
      files: plural("fileMax", maxFiles(conv.channel)),
      channel: t(`channel.${conv.channel}`),
    });
  }
}

/** The files a reply being sent takes: locked in the composer until the answer comes. */
function takeFiles(conv, cmid) {
  const ready = draftFiles(conv).filter((f) => f.state === "ready");
  for (const f of ready) f.sentWith = cmid;
  return ready;
}

/** The answer to a reply with files: accepted, they leave the composer; rejected, they stay. */
function settleFiles(rec, accepted) {
  const conv = S.convs.get(rec.conversationId);
  if (!conv || !rec.clientMessageId) return;
  const mine = conv.files.filter((f) => f.sentWith === rec.clientMessageId);
  if (!mine.length) return;
  if (accepted) conv.files = conv.files.filter((f) => f.sentWith !== rec.clientMessageId);
  else for (const f of mine) f.sentWith = "";
  if (S.openId === conv.id) renderAttachList();
}

/** An uploaded file as a message's attachment (the proto3 JSON of `Attachment`). */
function asAttachment(f) {
  return {
    id: f.id,
    kind: f.kind ? `ATTACHMENT_KIND_${f.kind.toUpperCase()}` : "ATTACHMENT_KIND_DOCUMENT",
    mimeType: f.mime,
    fileName: f.name,
    sizeBytes: String(f.size),
  };
}

/** The reply frame of a record (the same on a resend). */
function replyFrame(rec) {
  const reply = { conversationId: rec.conversationId, clientMessageId: rec.clientMessageId, text: rec.sendText ?? rec.text };
  if (rec.attachmentIds?.length) reply.attachmentIds = rec.attachmentIds;
  if (rec.template) reply.template = rec.template;
  return { reply };
}

const hasFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");

function wireAttachments() {
  const input = $("#attach-input");
  $("#attach-open").addEventListener("click", () => {
    if (S.openId) input.click();
  });
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
    $("#attach-open").focus();
  });
  const composer = $("#composer");
  const drop = $("#attach-drop");
  let depth = 0;
  composer.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth++;
    composer.classList.add("drop-target");
    drop.hidden = false;
  });
  composer.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  const leave = () => {
    depth = 0;
    composer.classList.remove("drop-target");
    drop.hidden = true;
  };
  composer.addEventListener("dragleave", (e) => {
    if (!hasFiles(e)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) leave();
  });
  composer.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    leave();
    addFiles(e.dataTransfer.files);
  });
  // A file dropped anywhere else must not replace the desk with the file.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (e) => {
      if (hasFiles(e) && !composer.contains(e.target)) {
        e.preventDefault();
        if (e.dataTransfer) e.dataTransfer.dropEffect = "none";
      }
    });
  }
  // A picture pasted into the reply box is attached (text pastes as usual).
  $("#reply-text").addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files ?? [])];
    if (!files.length || e.clipboardData.getData("text/plain")) return;
    e.preventDefault();
    addFiles(files);
  });
}

// ───────────────────────────── composer ─────────────────────────────

function sendReply() {
  const conv = S.convs.get(S.openId);
  if (!conv) return;
  const ta = $("#reply-text");
  const draft = draftFiles(conv);
  if (draft.some((f) => f.state === "uploading")) {
    $("#reply-error").textContent = t("attach.wait");
    return;
  }
  // With files, the text may be empty (a blank one is sent as none).
  const text = draft.length && !ta.value.trim() ? "" : ta.value;
  if (!text.trim() && !draft.length) return;
  if ([...text].length > 4096) {
    $("#reply-error").textContent = t("composer.tooLong");
    return;
  }
  const max = maxFiles(conv.channel);
  if (draft.length > max) {
    $("#reply-error").textContent = t("attach.tooMany", { channel: t(`channel.${conv.channel}`), files: plural("fileMax", max) });
    return;
  }
  if (conv.channel === "CHANNEL_VIBER" && text.trim() && draft.some((f) => f.kind !== "image")) {
    $("#reply-error").textContent = t("attach.viberText");
    return;
  }
  $("#reply-error").textContent = "";
  const cmid = newClientMessageId();
  const files = takeFiles(conv, cmid);
  queueReply(conv, cmid, { text, attachments: files.map(asAttachment), attachmentIds: files.map((f) => f.id) });
  ta.value = "";
  conv.draft = "";
  updateComposerExtras();
}

/** Shows a reply at once and sends it (again after a drop, with the same clientMessageId). */
function queueReply(conv, cmid, { text, shown = text, attachments = [], attachmentIds = [], template = null }) {
  const rec = makeRecord({
    conversationId: conv.id,
    customerId: conv.customerId,
    channel: conv.channel,
    senderKind: "SENDER_KIND_OPERATOR",
    operatorId: S.operatorId,
    text: shown,
    attachments,
    template,
  });
  rec.key = `c:${cmid}`;
  rec.clientMessageId = cmid;
  rec.attachmentIds = attachmentIds;
  // What goes to the service (a template's own text is empty).
  rec.sendText = text;
  rec.time = serverNow();
  rec.delivery = "unspecified";
  rec.local = "queued";
  conv.records.set(rec.key, rec);
  conv.index.set(rec.key, rec);
  S.pending.set(cmid, rec);
  conv.waitCache = undefined;
  if (sendFrame(replyFrame(rec))) rec.local = "sending";
  renderMessages({ toBottom: true });
  renderList();
}

// ───────────────────────────── WhatsApp templates ─────────────────────────────

function openTemplate() {
  const conv = S.convs.get(S.openId);
  if (!conv || conv.channel !== "CHANNEL_WHATSAPP") return;
  $("#template-error").textContent = "";
  if (!$("#template-language").value) $("#template-language").value = lang() === "ru" ? "ru" : "en_US";
  $("#template-dialog").showModal();
  $("#template-name").focus();
}

function submitTemplate(e) {
  e.preventDefault();
  const conv = S.convs.get(S.openId);
  if (!conv || conv.channel !== "CHANNEL_WHATSAPP") return;
  const name = $("#template-name").value.trim();
  const language = $("#template-language").value.trim();
  const bodyParameters = $("#template-params")
    .value.split("\n")
    .map((p) => p.trim())
    .filter((p) => p);
  // The service's own checks, said before anything is sent.
  let error = "";
  if (!/^[a-z0-9_]{1,512}$/.test(name)) error = t("template.badName");
  else if (!/^[a-z]{2,3}(_[A-Za-z0-9]{2,4})*$/.test(language)) error = t("template.badLanguage");
  else if (bodyParameters.length > 20 || bodyParameters.some((p) => [...p].length > 1024 || /\t| {5}/.test(p))) error = t("template.badParams");
  $("#template-error").textContent = error;
  if (error) return;
  // Shown as the service records it (its `template_text`), so the echo changes nothing.
  const shown = bodyParameters.length ? `[template ${name}] ${bodyParameters.join(" · ")}` : `[template ${name}]`;
  queueReply(conv, newClientMessageId(), { text: "", shown, template: { name, language, bodyParameters } });
  $("#template-params").value = "";
  $("#template-dialog").close();
}

function onComposerInput() {
  const conv = S.convs.get(S.openId);
  if (!conv) return;
  conv.draft = $("#reply-text").value;
  updateSmsCount();
  if (!conv.draft.trim()) return;
  const last = S.lastTypingSent.get(conv.id) ?? 0;
  if (Date.now() - last >= 2000 && sendFrame({ typing: { conversationId: conv.id } })) S.lastTypingSent.set(conv.id, Date.now());
}

function updateComposerExtras() {
  $("#template-open").hidden = S.convs.get(S.openId)?.channel !== "CHANNEL_WHATSAPP";
  renderAttachList();
  updateSmsCount();
  updateSmsLast();
  updateWindowWarning();
}

function updateSmsCount() {
  const conv = S.convs.get(S.openId);
  const el = $("#sms-segments");
  if (!conv || conv.channel !== "CHANNEL_SMS") {
    el.hidden = true;
    return;
  }
  el.hidden = false;
  const c = smsCount($("#reply-text").value);
  el.dataset.segments = c.segments;
  el.dataset.encoding = c.encoding;
  el.textContent = c.segments
    ? t("sms.count", {
        segments: plural("segment", c.segments),
        encoding: c.encoding,
        units: c.units,
        limit: c.segments === 1 ? c.single : c.segments * c.part,
      })
    : t("sms.empty");
}

function updateSmsLast() {
  const conv = S.convs.get(S.openId);
  const el = $("#sms-last");
  if (!conv || conv.channel !== "CHANNEL_SMS" || !conv.lastSms) {
    el.hidden = true;
    return;
  }
  el.hidden = false;
  el.dataset.segments = conv.lastSms.segments;
  el.textContent = t("sms.last", { segments: plural("segment", conv.lastSms.segments), encoding: conv.lastSms.encoding });
}

function updateWindowWarning() {
  const conv = S.convs.get(S.openId);
  const el = $("#wa-window");
  if (!conv || conv.channel !== "CHANNEL_WHATSAPP" || !conv.windowClose) {
    el.hidden = true;
    delete el.dataset.level;
    return;
  }
  const left = (conv.windowClose - serverNow()) / 1000;
  let level = "";
  let text = "";
  if (left <= 0) {
    level = "closed";
    text = t("wa.closed", { time: fmtSpan(-left) });
  } else if (left < 3600) {
    level = "closing";
    text = t("wa.closing", { time: fmtSpan(left) });
  }
  el.hidden = !level;
  if (level) {
    if (el.dataset.level !== level || el.textContent !== text) el.textContent = text;
    el.dataset.level = level;
  } else delete el.dataset.level;
}

function updateTyping() {
  const conv = S.convs.get(S.openId);
  const el = $("#typing");
  const on = !!conv && conv.typingUntil > Date.now();
  if (el.hidden === !on) return;
  el.hidden = !on;
  el.textContent = on ? t("conv.typing") : "";
}

// ───────────────────────────── notes ─────────────────────────────

async function loadNotes(view) {
  try {
    const r = await api("history/ListConversationNotes", { conversationId: view.convId });
    if (S.view !== view) return;
    view.notes = r.notes ?? [];
  } catch {
    if (S.view !== view) return;
    view.notes = [];
  }
  renderNotes();
}

function renderNotes() {
  const view = S.view;
  const ul = $("#notes-list");
  if (!view) {
    ul.replaceChildren();
    return;
  }
  ul.replaceChildren(
    ...view.notes.map((n) =>
      h(
        "li",
        { "data-testid": "note" },
        h("div", { class: "note-meta", text: `${S.operators.get(n.author)?.displayName || n.author || ""} · ${fmtDateTime(ts(n.createTime))}` }),
        h("div", { class: "note-text", text: n.text ?? "" }),
      ),
    ),
  );
  $("#notes-none").hidden = view.notes.length > 0;
}

async function addNote(e) {
  e.preventDefault();
  const view = S.view;
  const ta = $("#note-text");
  const text = ta.value.trim();
  if (!view || !text) return;
  $("#note-error").textContent = "";
  $("#note-add").disabled = true;
  try {
    const r = await api("history/AddConversationNote", { conversationId: view.convId, text });
    if (S.view === view) {
      view.notes.push(r.note ?? { text, author: S.operatorId, createTime: new Date().toISOString() });
      ta.value = "";
      renderNotes();
    }
  } catch (err) {
    $("#note-error").textContent = t("info.noteFailed", { message: err.message });
  } finally {
    $("#note-add").disabled = false;
  }
}

// ───────────────────────────── canned answers ─────────────────────────────

const DEFAULT_CANNED = [
  { id: "en-1", lang: "en", text: "Hello! How can I help you?" },
  { id: "en-2", lang: "en", text: "Thank you for waiting. I am looking into it now." },
  { id: "en-3", lang: "en", text: "Could you please send your order number?" },
  { id: "en-4", lang: "en", text: "I have passed your request to a specialist; they will contact you shortly." },
  { id: "en-5", lang: "en", text: "Is there anything else I can help you with?" },
  { id: "en-6", lang: "en", text: "Thank you for contacting us. Have a nice day!" },
  { id: "ru-1", lang: "ru", text: "Здравствуйте! Чем могу помочь?" },
  { id: "ru-2", lang: "ru", text: "Спасибо за ожидание. Уже разбираюсь." },
  { id: "ru-3", lang: "ru", text: "Подскажите, пожалуйста, номер вашего заказа." },
  { id: "ru-4", lang: "ru", text: "Я передал ваш запрос специалисту, он свяжется с вами в ближайшее время." },
  { id: "ru-5", lang: "ru", text: "Могу ли я помочь чем-то ещё?" },
  { id: "ru-6", lang: "ru", text: "Спасибо за обращение! Хорошего дня!" },
];

function ownCanned() {
  const list = loadJson(cannedKey(), []);
  return Array.isArray(list) ? list.filter((c) => c && typeof c.text === "string" && typeof c.id === "string") : [];
}

function cannedEntries() {
  const mine = ownCanned().map((c) => ({ ...c, own: true }));
  const here = DEFAULT_CANNED.filter((c) => c.lang === lang());
  const other = DEFAULT_CANNED.filter((c) => c.lang !== lang());
  return [...mine, ...here, ...other];
}

function renderCanned() {
  const filter = $("#canned-filter").value.trim().toLowerCase();
  const entries = cannedEntries().filter((c) => !filter || c.text.toLowerCase().includes(filter));
  const ul = $("#canned-list");
  ul.replaceChildren(
    ...entries.map((c) => {
      const choose = h(
        "button",
        { type: "button", class: "canned-choose", "data-testid": "canned-item", "data-canned-id": c.id },
        h("span", { class: "canned-tag", text: c.own ? t("canned.mine") : c.lang }),
        c.text,
      );
      choose.addEventListener("click", () => insertCanned(c.text));
      const li = h("li", {}, choose);
      if (c.own) {
        const remove = h("button", { type: "button", class: "danger", "data-testid": "canned-remove", text: t("canned.remove") });
        remove.setAttribute("aria-label", t("canned.removeLabel", { text: c.text.slice(0, 60) }));
        remove.addEventListener("click", () => {
          saveJson(cannedKey(), ownCanned().filter((x) => x.id !== c.id));
          renderCanned();
          $("#canned-filter").focus();
        });
        li.append(remove);
      }
      return li;
    }),
  );
  $("#canned-none").hidden = entries.length > 0;
}

function openCanned() {
  if (!S.openId) return;
  const dlg = $("#canned-dialog");
  $("#canned-filter").value = "";
  $("#canned-new").value = "";
  renderCanned();
  if (!dlg.open) dlg.showModal();
  $("#canned-filter").focus();
}

function insertCanned(text) {
  const ta = $("#reply-text");
  $("#canned-dialog").close();
  const start = ta.selectionStart ?? ta.value.length;
  const end = ta.selectionEnd ?? ta.value.length;
  ta.setRangeText(text, start, end, "end");
  ta.focus();
  onComposerInput();
}

function onCannedKey(e) {
  const buttons = [...$("#canned-list").querySelectorAll(".canned-choose")];
  const filter = $("#canned-filter");
  const i = buttons.indexOf(document.activeElement);
  if (document.activeElement === filter) {
    if (e.key === "ArrowDown" && buttons.length) {
      e.preventDefault();
      buttons[0].focus();
    } else if (e.key === "Enter" && buttons.length) {
      e.preventDefault();
      buttons[0].click();
    }
    return;
  }
  if (i < 0) return;
  if (e.key === "ArrowDown") {
    e.preventDefault();
    buttons[Math.min(buttons.length - 1, i + 1)].focus();
  } else if (e.key === "ArrowUp") {
    e.preventDefault();
    if (i === 0) filter.focus();
    else buttons[i - 1].focus();
  }
}

function addCanned(e) {
  e.preventDefault();
  const text = $("#canned-new").value.trim();
  if (!text || !S.operatorId) return;
  const list = ownCanned();
  list.unshift({ id: `own-${newClientMessageId()}`, text });
  saveJson(cannedKey(), list);
  $("#canned-new").value = "";
  renderCanned();
}

// ───────────────────────────── transfer ─────────────────────────────

async function loadDirectory() {
  if (Date.now() - S.listsLoadedAt < 60000) return;
  const [ops, queues, skills] = await Promise.allSettled([
    api("admin/ListOperators", {}),
    api("admin/ListQueues", {}),
    api("admin/ListSkills", {}),
  ]);
  if (ops.status === "fulfilled") for (const o of ops.value.operators ?? []) S.operators.set(o.id, o);
  if (queues.status === "fulfilled") {
    S.queues.clear();
    for (const q of queues.value.queues ?? []) S.queues.set(q.id, q);
  }
  if (skills.status === "fulfilled") S.skills = skills.value.skills ?? [];
  if (ops.status === "fulfilled" && queues.status === "fulfilled" && skills.status === "fulfilled") S.listsLoadedAt = Date.now();
}

function fillTransferTargets() {
  const kind = $("#transfer-kind").value;
  const select = $("#transfer-target");
  let options = [];
  if (kind === "operator") {
    options = [...S.operators.values()]
      .filter((o) => o && o.id && o.id !== S.operatorId && !o.disabled)
      .sort((a, b) => (a.displayName || a.id).localeCompare(b.displayName || b.id))
      .map((o) => [o.id, o.displayName ? `${o.displayName} (${o.id})` : o.id]);
  } else if (kind === "queue") {
    options = [...S.queues.values()].map((q) => [q.id, q.displayName ? `${q.displayName} (${q.id})` : q.id]);
  } else {
    options = S.skills.map((s) => [s.id, s.displayName ? `${s.displayName} (${s.id})` : s.id]);
  }
  const previous = select.value;
  select.replaceChildren(...options.map(([value, label]) => h("option", { value, text: label })));
  if (!options.length) select.append(h("option", { value: "", text: t("transfer.noTargets") }));
  if (options.some(([v]) => v === previous)) select.value = previous;
  $("#transfer-skill-level").hidden = kind !== "skill";
  $("#transfer-submit").disabled = !options.length;
}

async function openTransfer() {
  if (!S.openId) return;
  const dlg = $("#transfer-dialog");
  $("#transfer-error").textContent = "";
  $("#transfer-note").value = "";
  $("#transfer-target").replaceChildren(h("option", { value: "", text: t("transfer.loading") }));
  $("#transfer-submit").disabled = true;
  if (!dlg.open) dlg.showModal();
  $("#transfer-kind").focus();
  await loadDirectory();
  if (dlg.open) fillTransferTargets();
}

async function submitTransfer(e) {
  e.preventDefault();
  const id = S.openId;
  if (!id) return;
  const kind = $("#transfer-kind").value;
  const target = $("#transfer-target").value;
  if (!target) return;
  const body = { conversationId: id, note: $("#transfer-note").value };
  if (kind === "operator") body.operatorId = target;
  else if (kind === "queue") body.queueId = target;
  else body.skill = { skill: target, proficiency: Number($("#transfer-proficiency").value) || 1 };
  const btn = $("#transfer-submit");
  btn.disabled = true;
  $("#transfer-error").textContent = "";
  try {
    await api("routing/TransferConversation", body);
    $("#transfer-dialog").close();
    notice(t("transfer.done"));
    // The conversation leaves the list on its `released` event.
  } catch (err) {
    $("#transfer-error").textContent = t("transfer.failed", { message: err.message });
  } finally {
    btn.disabled = false;
  }
}

async function closeConversation() {
  const id = S.openId;
  if (!id) return;
  const btn = $("#conversation-close");
  btn.disabled = true;
  $("#conv-error").textContent = "";
  try {
    await api("routing/CloseConversation", { conversationId: id });
    // The conversation leaves the list on its `released` event.
  } catch (err) {
    $("#conv-error").textContent = t("conv.closeFailed", { message: err.message });
  } finally {
    btn.disabled = false;
  }
}

// ───────────────────────────── supervisor view ─────────────────────────────

function showTab(which) {
  const sup = which === "supervisor";
  $("#desk").hidden = sup || S.supervisorOnly;
  $("#supervisor").hidden = !sup;
  for (const [id, on] of [
    ["#tab-desk", !sup],
    ["#tab-supervisor", sup],
  ]) {
    const tab = $(id);
    tab.setAttribute("aria-selected", on ? "true" : "false");
    tab.tabIndex = on ? 0 : -1;
  }
  clearInterval(S.supTimer);
  if (sup) {
    refreshSupervisor();
    S.supTimer = setInterval(refreshSupervisor, 5000);
    teamStart();
  } else {
    teamStop();
  }
}

function enterSupervisorOnly() {
  S.supervisorOnly = true;
  setConn("unavailable");
  $("#status-form").hidden = true;
  $("#tabs").hidden = true;
  $("#sup-only").hidden = false;
  renderMe();
  showTab("supervisor");
}

let supBusy = false;
async function refreshSupervisor() {
  if (supBusy || S.stopped && !S.supervisorOnly) return;
  if (document.visibilityState !== "visible" && S.supLoadedOnce) return;
  supBusy = true;
  const started = Date.now();
  try {
    const [queuesR, presR, opsR] = await Promise.all([
      api("admin/ListQueues", {}),
      api("routing/ListOperatorPresences", {}),
      api("admin/ListOperators", {}).catch(() => ({ operators: [] })),
    ]);
    for (const o of opsR.operators ?? []) S.operators.set(o.id, o);
    const queues = queuesR.queues ?? [];
    for (const q of queues) S.queues.set(q.id, q);
    const statuses = await Promise.all(
      queues.map((q) => api("routing/GetQueueStatus", { queueId: q.id }).catch((e) => ({ queueId: q.id, error: e.message }))),
    );
    renderSupQueues(queues, statuses);
    // A change the team feed told after this refresh began is newer than what it read.
    const fresh = new Map();
    for (const p of presR.presences ?? []) {
      const id = p.operatorId ?? "";
      const told = T.presences.get(id);
      fresh.set(id, told && told.at > started ? { ...p, ...told.presence, load: p.load } : p);
    }
    S.presences = fresh;
    renderSupOperators([...fresh.values()]);
    $("#sup-error").textContent = "";
    $("#sup-updated").textContent = t("sup.updated", { time: new Intl.DateTimeFormat(lang(), { timeStyle: "medium" }).format(new Date()) });
    S.supLoadedOnce = true;
  } catch (e) {
    $("#sup-error").textContent = t("sup.failed", { message: e.message });
  } finally {
    supBusy = false;
  }
}

function renderSupQueues(queues, statuses) {
  const tbody = $("#sup-queues tbody");
  const num = (v, testid) => h("td", { class: "num", "data-testid": testid, text: String(Number(v ?? 0)) });
  const secs = (v, testid) => h("td", { class: "num", "data-testid": testid, text: Number(v ?? 0) ? fmtElapsed(Number(v)) : "—" });
  tbody.replaceChildren(
    ...queues.map((q, i) => {
      const s = statuses[i] ?? {};
      if (s.error) {
        return h("tr", { "data-testid": "sup-queue", "data-queue-id": q.id }, h("th", { scope: "row", text: q.displayName || q.id }), h("td", { colspan: "9", class: "error", text: s.error }));
      }
      return h(
        "tr",
        { "data-testid": "sup-queue", "data-queue-id": q.id },
        h("th", { scope: "row", text: q.displayName || q.id }),
        h("td", { text: s.open ? t("sup.yes") : t("sup.no") }),
        num(s.waitingConversations, "sup-queue-depth"),
        secs(s.oldestWaitSeconds, "sup-queue-oldest"),
        secs(s.estimatedWaitSeconds, "sup-queue-estimate"),
        num(s.availableOperators, "sup-queue-available"),
        num(s.operatorsOnline, "sup-queue-online"),
        num(s.operatorsAway, "sup-queue-away"),
        num(s.operatorsDraining, "sup-queue-draining"),
        num(s.operatorsOffline, "sup-queue-offline"),
      );
    }),
  );
  if (!queues.length) tbody.append(h("tr", {}, h("td", { colspan: "10", class: "muted", text: t("sup.none") })));
}

function renderSupOperators(presences) {
  const groups = { online: [], away: [], draining: [], offline: [], unknown: [] };
  for (const p of presences) groups[statusOf(p.status)]?.push(p);
  const box = $("#sup-operators");
  const titles = { online: "sup.online", away: "sup.away", draining: "sup.draining", offline: "sup.offline", unknown: "status.unknown" };
  box.replaceChildren(
    ...Object.entries(groups)
      .filter(([k, list]) => list.length || k !== "unknown")
      .map(([k, list]) =>
        h(
          "section",
          { class: "sup-group", "data-testid": "sup-status-group", "data-status": k },
          h("h4", { text: `${t(titles[k])} (${list.length})` }),
          list.length
            ? h(
                "ul",
                {},
                list
                  .sort((a, b) => (a.operatorId ?? "").localeCompare(b.operatorId ?? ""))
                  .map((p) => {
                    const name = S.operators.get(p.operatorId)?.displayName || p.operatorId || "";
                    const load = (p.load ?? [])
                      .map((l) => `${t(`channel.${channelOf(l.channel)}`)} ${Number(l.activeConversations ?? 0)}/${Number(l.maxConversations ?? 0)}`)
                      .join(" · ");
                    return h(
                      "li",
                      { "data-testid": "sup-operator", "data-operator-id": p.operatorId ?? "" },
                      h("span", { text: name }),
                      h("span", { class: "muted small", text: ` · ${t(p.connected ? "sup.deskOn" : "sup.deskOff")}` }),
                      p.reason ? h("span", { class: "muted", text: ` — ${p.reason}` }) : null,
                      h("span", { class: "sup-load", text: `${t("sup.load")}: ${load || t("sup.noLoad")}` }),
                    );
                  }),
              )
            : h("p", { class: "muted small", text: t("sup.none") }),
        ),
      ),
  );
}

// ───────────────────────────── the team feed ─────────────────────────────
// While the supervisor view is open, a team session on its own socket tells every
// operator's presence change as it happens, resumed after a drop from the last sequence
// seen; the 5-second refresh keeps queue figures and loads current.
const T = { ws: null, want: false, seq: 0n, timer: 0, beat: 0, backoff: 500, presences: new Map() };

function teamStart() {
  T.want = true;
  if (!T.ws) teamConnect();
}

function teamStop() {
  T.want = false;
  clearTimeout(T.timer);
  clearInterval(T.beat);
  const ws = T.ws;
  T.ws = null;
  ws?.close();
  setTeamState("off");
}

function setTeamState(state) {
  const el = $("#sup-live");
  el.dataset.state = state;
  el.textContent = state === "off" ? "" : t(`sup.live.${state}`);
}

function teamConnect() {
  clearTimeout(T.timer);
  if (!T.want || !S.token) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${location.host}/desk/ws`);
  } catch {
    teamRetry();
    return;
  }
  T.ws = ws;
  const requested = T.seq;
  ws.addEventListener("open", () => {
    const hello = { resumeAfterSequence: requested.toString(), clientName: "web desk (team)", team: true };
    ws.send(JSON.stringify({ token: S.token, hello }));
  });
  ws.addEventListener("message", (e) => {
    if (ws !== T.ws) return;
    let f;
    try {
      f = JSON.parse(e.data);
    } catch {
      return;
    }
    if (f.welcome) {
      T.backoff = 500;
      clearInterval(T.beat);
      const every = Math.max(1, Number(f.welcome.heartbeatIntervalSeconds ?? 0) || 5) * 800;
      T.beat = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send('{"heartbeat":{}}'), every);
      const resumed = big(f.welcome.resumeAfterSequence);
      // Started afresh (or the resume point was gone): what happened meanwhile is read whole.
      if (requested === 0n || resumed !== requested) refreshSupervisor();
      T.seq = resumed;
      setTeamState("live");
    } else if (f.event?.presence) {
      const seq = big(f.event.sequence);
      if (seq <= T.seq) return;
      T.seq = seq;
      onTeamPresence(f.event.presence);
    } else if (f.error) {
      // A resume point the stream no longer has: start over from now and read everything.
      if (f.error.code !== "UNAVAILABLE") T.seq = 0n;
      if (f.error.code === "PERMISSION_DENIED" || f.error.code === "UNAUTHENTICATED") T.want = false;
    }
  });
  ws.addEventListener("close", () => {
    if (ws !== T.ws) return;
    T.ws = null;
    clearInterval(T.beat);
    teamRetry();
  });
}

function teamRetry() {
  if (!T.want) {
    setTeamState("off");
    return;
  }
  setTeamState("reconnecting");
  const delay = T.backoff * (0.75 + Math.random() * 0.5);
  T.backoff = Math.min(10000, T.backoff * 2);
  T.timer = setTimeout(teamConnect, delay);
}

/** A colleague's presence changed: shown at once (the load stays until the next refresh). */
function onTeamPresence(p) {
  const id = p.operatorId ?? "";
  // Proto3 JSON leaves out false and empty fields.
  const presence = { status: p.status, reason: p.reason ?? "", connected: p.connected === true, statusChangeTime: p.statusChangeTime };
  T.presences.set(id, { presence, at: Date.now() });
  const old = S.presences.get(id) ?? { operatorId: id, load: [] };
  S.presences.set(id, { ...old, ...presence });
  renderSupOperators([...S.presences.values()]);
}

function onTabsKey(e) {
  const tabs = [...document.querySelectorAll("#tabs [role=tab]")].filter((x) => !x.hidden);
  const i = tabs.indexOf(document.activeElement);
  if (i < 0 || (e.key !== "ArrowRight" && e.key !== "ArrowLeft")) return;
  e.preventDefault();
  const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
  next.focus();
  next.click();
}

// ───────────────────────────── the second tick ─────────────────────────────

/** Four times a second, so countdowns and waiting times never lag by a whole second. */
function tick() {
  tickOffers();
  for (const conv of S.convs.values()) updateItem(conv);
  if (S.openId) {
    updateTyping();
    updateWindowWarning();
  }
}

// ───────────────────────────── sign-in and out ─────────────────────────────

function resetData() {
  S.versions.clear();
  S.convs.clear();
  S.offers.clear();
  S.pending.clear();
  S.earlyDelivery.clear();
  S.customers.clear();
  S.queues.clear();
  S.queuesPromise = null;
  S.operators.clear();
  S.skills = [];
  S.listsLoadedAt = 0;
  S.lastTypingSent.clear();
  S.openId = "";
  S.view = null;
  S.loaded = false;
  S.lastSeq = 0n;
  S.ackedSeq = 0n;
  abortUploads();
  revokeFiles();
  $("#attach-list").replaceChildren();
  $("#attach-list").hidden = true;
  $("#reply-send").disabled = false;
  $("#offers").replaceChildren();
  $("#conversation-list").replaceChildren();
  $("#messages").replaceChildren();
  $("#conversation-view").hidden = true;
  $("#conversation-empty").hidden = false;
  $("#info-content").hidden = true;
  $("#offers-none").hidden = false;
  $("#list-none").hidden = false;
}

function startSession(token) {
  S.token = token;
  S.stopped = false;
  S.everConnected = false;
  S.backoff = 500;
  S.supervisorOnly = false;
  S.operatorId = "";
  S.me = null;
  S.presence = null;
  resetData();
  $("#status").selectedIndex = -1;
  $("#login").hidden = true;
  $("#session-controls").hidden = false;
  $("#logout").hidden = false;
  $("#status-form").hidden = false;
  $("#tabs").hidden = true;
  $("#tab-supervisor").hidden = true;
  $("#sup-only").hidden = true;
  $("#status-current").textContent = "";
  renderMe();
  showTab("desk");
  connect();
  clearInterval(S.tickTimer);
  S.tickTimer = setInterval(tick, 250);
  clearInterval(S.presenceTimer);
  S.presenceTimer = setInterval(refreshPresence, 30000);
}

function signOut(message = "") {
  S.stopped = true;
  const ws = S.ws;
  S.ws = null;
  S.welcomed = false;
  try {
    ws?.close();
  } catch {
    // Already closed.
  }
  clearTimeout(S.reconnectTimer);
  startHeartbeatClock(0);
  clearInterval(S.tickTimer);
  clearInterval(S.presenceTimer);
  clearInterval(S.supTimer);
  teamStop();
  T.seq = 0n;
  T.presences.clear();
  S.presences.clear();
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Nothing stored.
  }
  S.token = "";
  S.operatorId = "";
  resetData();
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
  clearTimeout(noticeTimer);
  $("#notice").textContent = "";
  $("#sup-error").textContent = "";
  $("#sup-updated").textContent = "";
  $("#sup-queues tbody").replaceChildren();
  $("#sup-operators").replaceChildren();
  S.supLoadedOnce = false;
  $("#session-controls").hidden = true;
  $("#logout").hidden = true;
  $("#desk").hidden = true;
  $("#supervisor").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#login-token").value = "";
  $("#login-token").focus();
}

// ───────────────────────────── language ─────────────────────────────

function rerenderAll() {
  applyStatic();
  $("#lang").value = lang();
  setConn($("#connection").dataset.state || "connecting");
  renderMe();
  renderPresence();
  if (!S.presence) $("#status-current").textContent = "";
  renderOffers();
  for (const conv of S.convs.values()) {
    if (conv.itemEl) conv.itemEl.dataset.sig = "";
    for (const rec of conv.records.values()) rec.attEl = null;
  }
  renderList();
  if (S.view) {
    for (const conv of S.convs.values()) for (const rec of conv.records.values()) if (rec.el) fillMessage(rec);
    for (const rec of S.view.history.values()) {
      rec.attEl = null;
      if (rec.el) fillMessage(rec);
    }
    renderConversationHeader();
    renderInfo();
    renderNotes();
    renderMessages();
    updateComposerExtras();
    $("#typing").hidden = true;
    updateTyping();
  }
  if ($("#canned-dialog").open) renderCanned();
  if ($("#transfer-dialog").open) fillTransferTargets();
  if (!$("#supervisor").hidden) refreshSupervisor();
}

// ───────────────────────────── wiring ─────────────────────────────

function init() {
  applyStatic();
  $("#lang").value = lang();
  $("#lang").addEventListener("change", (e) => {
    setLang(e.target.value);
    rerenderAll();
  });

  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("#login-token").value.trim().replace(/^Bearer\s+/i, "");
    if (!token) {
      $("#login-error").textContent = t("login.empty");
      return;
    }
    $("#login-error").textContent = "";
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      // Kept in memory only.
    }
    $("#login-token").value = "";
    S.focusListOnLoad = true;
    startSession(token);
  });
  $("#logout").addEventListener("click", () => signOut());

  $("#status").addEventListener("change", (e) => {
    const v = e.target.value;
    if (v === "away" && !$("#away-reason").value.trim()) {
      notice(t("status.reasonRequired"));
      $("#away-reason").focus();
      return;
    }
    setStatus(v);
  });
  $("#away-reason").addEventListener("change", () => {
    if ($("#status").value === "away" && $("#away-reason").value.trim()) setStatus("away");
  });
  $("#status-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setStatus($("#status").value);
  });

  $("#tab-desk").addEventListener("click", () => showTab("desk"));
  $("#tab-supervisor").addEventListener("click", () => showTab("supervisor"));
  $("#tabs").addEventListener("keydown", onTabsKey);

  $("#conversation-list").addEventListener("keydown", onListKey);

  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendReply();
  });
  const ta = $("#reply-text");
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      sendReply();
    }
  });
  ta.addEventListener("input", onComposerInput);

  $("#history-more").addEventListener("click", () => {
    if (S.view) loadTimeline(S.view, { more: true });
  });

  $("#canned-open").addEventListener("click", openCanned);
  $("#canned-filter").addEventListener("input", renderCanned);
  $("#canned-dialog").addEventListener("keydown", onCannedKey);
  $("#canned-form").addEventListener("submit", addCanned);
  $("#canned-close").addEventListener("click", () => {
    $("#canned-dialog").close();
    ta.focus();
  });

  $("#transfer-open").addEventListener("click", openTransfer);
  $("#template-open").addEventListener("click", openTemplate);
  $("#template-form").addEventListener("submit", submitTemplate);
  $("#template-cancel").addEventListener("click", () => $("#template-dialog").close());
  $("#template-dialog").addEventListener("close", () => {
    if (S.openId) $("#reply-text").focus();
  });
  $("#transfer-kind").addEventListener("change", fillTransferTargets);
  $("#transfer-form").addEventListener("submit", submitTransfer);
  $("#transfer-cancel").addEventListener("click", () => $("#transfer-dialog").close());
  $("#transfer-dialog").addEventListener("close", () => {
    if (S.openId) $("#transfer-open").focus();
  });

  wireAttachments();

  $("#conversation-close").addEventListener("click", closeConversation);
  $("#note-form").addEventListener("submit", addNote);

  $("#info-toggle").addEventListener("click", () => {
    const pane = $("#customer-info");
    const open = pane.classList.toggle("open");
    $("#info-toggle").setAttribute("aria-expanded", open ? "true" : "false");
  });
  $("#customer-info").addEventListener("keydown", (e) => {
    const pane = $("#customer-info");
    if (e.key === "Escape" && pane.classList.contains("open")) {
      pane.classList.remove("open");
      $("#info-toggle").setAttribute("aria-expanded", "false");
      $("#info-toggle").focus();
    }
  });

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    const conv = S.convs.get(S.openId);
    if (conv) markViewed(conv);
    // A backgrounded tab's timers may have been slowed: check the link now.
    if (S.ws && Date.now() - S.lastFrameAt > S.heartbeatMs * 3 + 5000) dropSocket();
  });
  window.addEventListener("online", () => {
    if (!S.stopped && !S.ws) connect();
  });

  let token = "";
  try {
    token = sessionStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    token = "";
  }
  if (token) startSession(token);
  else {
    $("#login").hidden = false;
    $("#login-token").focus();
  }
  if (reducedMotion()) document.documentElement.classList.add("reduced-motion");
}

if (typeof document === "undefined") {
  // Started as the heartbeat clock (see startHeartbeatClock): tick at the interval asked for.
  let timer = 0;
  self.addEventListener("message", (e) => {
    clearInterval(timer);
    if (e.data > 0) timer = setInterval(() => self.postMessage("tick"), e.data);
  });
} else {
  init();
}
