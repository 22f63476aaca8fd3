// Parley's browser scenario (run by tests/e2e/browser.rs): the widget on a shop page of another origin and two operator desks in headless Chromium, through TCP proxies that can cut the network; every step asserted, the last stdout line says what was written.
//
// Environment (set by the Rust test): PARLEY_DESK_URL, PARLEY_INGEST_URL, PARLEY_TENANT,
// PARLEY_CHANNEL, PARLEY_ANNA_TOKEN, PARLEY_BORIS_TOKEN, PARLEY_SUPERVISOR_TOKEN,
// PARLEY_WA_BODY, PARLEY_WA_SIGNATURE, PARLEY_ARTIFACTS, PARLEY_CHROMIUM.
// Only playwright-core, axe-core (the accessibility checks) and node built-ins; the browser
// is the system's Chromium.

import http from "node:http";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { chromium } from "playwright-core";

// ───────────────────────────── configuration ─────────────────────────────

function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`scenario: ${name} is not set (the Rust test tests/e2e/browser.rs sets it)`);
    process.exit(2);
  }
  return v;
}

const DESK_URL = env("PARLEY_DESK_URL");
const INGEST_URL = env("PARLEY_INGEST_URL");
const TENANT = env("PARLEY_TENANT");
const CHANNEL = env("PARLEY_CHANNEL");
const ANNA_TOKEN = env("PARLEY_ANNA_TOKEN");
const BORIS_TOKEN = env("PARLEY_BORIS_TOKEN");
const SUPERVISOR_TOKEN = env("PARLEY_SUPERVISOR_TOKEN");
/** A WhatsApp webhook (Meta's payload) and its signature, for a customer who writes there. */
const WA_BODY = env("PARLEY_WA_BODY");
const WA_SIGNATURE = env("PARLEY_WA_SIGNATURE");
const ARTIFACTS = env("PARLEY_ARTIFACTS");
const CHROMIUM = env("PARLEY_CHROMIUM");

/** How long one expectation may take. */
const WAIT_MS = 15000;
/** How long the network stays cut. */
const CUT_MS = 3000;
/** The whole scenario's limit (the Rust test allows 240 s). */
const SCENARIO_MS = 115000;

/** Markup that would run if any of it were rendered as HTML: every text written carries it. */
const PAYLOAD = `<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>`;
const text = (words) => `${words} ${PAYLOAD} & </div>"'`;

const TEXTS = {
  customer1: text("Здравствуйте, заказ 1001 не пришёл"),
  anna1: text("Анна: сейчас проверю заказ"),
  customerCut: text("Клиент пишет без сети"),
  annaFile: text("Анна: вот фото чека"),
  customerFile: text("Клиент: а вот фото коробки"),
  annaCut: text("Анна отвечает без сети"),
  boris1: text("Борис: заказ уже в пути"),
};
const NOTE = text("Заметка Борису: клиент ждёт заказ 1001");
/** The file Anna attaches: its name carries markup too (shown as text, never made into elements). */
const FILE_NAME = `чек <b>1001</b> & "x".png`;
/** The picture the customer attaches in the widget, its name marked up too. */
const CUSTOMER_FILE_NAME = `коробка <i>1001</i> & "y".png`;
/** Every message written, in the order written (the transfer note is not a message). */
const written = [];

const started = Date.now();
// Everything said on stdout and stderr also goes to PARLEY_ARTIFACTS/scenario.log, for a run that passed.
fs.mkdirSync(ARTIFACTS, { recursive: true });
const logFile = path.join(ARTIFACTS, "scenario.log");
fs.writeFileSync(logFile, "");
for (const stream of [process.stdout, process.stderr]) {
  const write = stream.write.bind(stream);
  stream.write = (chunk, ...rest) => {
    try {
      fs.appendFileSync(logFile, chunk);
    } catch {
      // The log is a convenience.
    }
    return write(chunk, ...rest);
  };
}
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${msg}`);

// ───────────────────────────── TCP proxies that can cut the network ─────────────────────────────

/** A TCP proxy to `target` on a port of its own; `cut()` drops every connection and refuses new ones until `restore()`. */
async function startProxy(name, target) {
  const to = new URL(target);
  const pairs = new Set();
  let isCut = false;
  let accepted = 0;
  let refused = 0;
  const kill = (sock) => {
    if (typeof sock.resetAndDestroy === "function" && !sock.destroyed && sock.readyState !== "opening") sock.resetAndDestroy();
    else sock.destroy();
  };
  const server = net.createServer({ noDelay: true }, (client) => {
    if (isCut) {
      refused++;
      client.on("error", () => {});
      kill(client);
      return;
    }
    accepted++;
    const upstream = net.connect({ host: to.hostname, port: Number(to.port), noDelay: true });
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      if (!pairs.delete(pair)) return;
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const url = `http://127.0.0.1:${server.address().port}`;
  log(`proxy ${name}: ${url} → ${target}`);
  return {
    name,
    url,
    get open() {
      return pairs.size;
    },
    get refused() {
      return refused;
    },
    get accepted() {
      return accepted;
    },
    cut() {
      isCut = true;
      const n = pairs.size;
      for (const p of [...pairs]) {
        pairs.delete(p);
        kill(p.client);
        p.upstream.destroy();
      }
      return n;
    },
    restore() {
      isCut = false;
    },
    close() {
      isCut = true;
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

// ───────────────────────────── the shop page (another origin) ─────────────────────────────

function escapeAttr(s) {
  return String(s).replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;");
}

async function startShop(widgetSrc) {
  const page = `<!doctype html>
<html lang="ru">
<head>
<meta charset="utf-8">
<title>Магазин чайников</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#fafaf7;color:#222}
header{background:#2b4c3f;color:#fff;padding:16px 32px}
main{padding:24px 32px;max-width:900px}
.goods{display:grid;grid-template-columns:repeat(3,1fr);gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:16px;height:160px}
</style>
</head>
<body>
<header><h1>Магазин чайников</h1></header>
<main>
<p>Чайники, заварники и всё для чая. Вопросы о заказе — в чате справа внизу.</p>
<div class="goods">
<div class="card"><h2>Чайник «Утро»</h2><p>1 490 ₽</p></div>
<div class="card"><h2>Заварник «Сад»</h2><p>990 ₽</p></div>
<div class="card"><h2>Чашки, 6 шт.</h2><p>1 200 ₽</p></div>
</div>
</main>
<script src="${escapeAttr(widgetSrc)}" data-tenant="${escapeAttr(TENANT)}" data-channel="${escapeAttr(CHANNEL)}" data-lang="ru" async></script>
</body>
</html>
`;
  const server = http.createServer((req, res) => {
    if (req.url === "/favicon.ico") {
      res.writeHead(204);
      res.end();
    } else if (req.url === "/" || req.url.startsWith("/?")) {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
      res.end(page);
    } else {
      res.writeHead(404, { "Content-Type": "text/plain" });
      res.end("not found");
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const url = `http://127.0.0.1:${server.address().port}/`;
  log(`shop: ${url}`);
  return { url, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

// ───────────────────────────── a small picture ─────────────────────────────

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** A valid w×h PNG of one RGB colour. */
function makePng(w, h, [r, g, b]) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // truecolour
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) raw.set([r, g, b], y * (w * 3 + 1) + 1 + x * 3);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", zlib.deflateSync(raw)),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

// ───────────────────────────── waiting and asserting ─────────────────────────────

class ScenarioError extends Error {}

function fail(message) {
  throw new ScenarioError(message);
}

function show(v) {
  if (v instanceof Error) return v.message;
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

/**
 * Polls `probe` (which returns `{ok, ...details}`) until `ok`, for at most `timeout` ms; fails
 * with `what` and the last details seen.
 */
async function until(what, probe, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last && last.ok) return last;
    } catch (e) {
      if (e instanceof ScenarioError) throw e; // the probe saw a definite failure
      last = e;
    }
    if (Date.now() > deadline) fail(`${what}: not so within ${timeout / 1000} s; last seen: ${show(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function counts(list) {
  const m = new Map();
  for (const s of list) m.set(s, (m.get(s) ?? 0) + 1);
  return m;
}

/** The text of every message node in the desk's open conversation (the current conversation's, not earlier ones). */
async function deskTexts(page, conversationId) {
  return page.evaluate((cid) => {
    return [...document.querySelectorAll('#messages [data-testid="message"]')]
      .filter((m) => !cid || m.dataset.conversationId === cid)
      .map((m) => m.querySelector('[data-testid="message-text"]')?.textContent ?? "");
  }, conversationId);
}

/** The desk's message node for `text`: its delivery state and sender, for each node with exactly that text. */
async function deskMessages(page, wanted) {
  return page.evaluate((wanted) => {
    return [...document.querySelectorAll('#messages [data-testid="message"]')]
      .filter((m) => m.querySelector('[data-testid="message-text"]')?.textContent === wanted)
      .map((m) => ({
        sender: m.dataset.sender,
        delivery: m.dataset.delivery ?? "",
        deliveryText: m.querySelector('[data-testid="delivery"]')?.textContent ?? "",
        messageId: m.dataset.messageId ?? "",
        conversationId: m.dataset.conversationId ?? "",
      }));
  }, wanted);
}

/** The widget's messages: text, sender and own-message state, from its (open) shadow root. */
async function widgetMessages(page) {
  return page.evaluate(() => {
    const root = document.querySelector("parley-chat")?.shadowRoot;
    if (!root) return null;
    return [...root.querySelectorAll('[data-testid="widget-message"]')].map((m) => ({
      text: m.querySelector('[data-testid="widget-message-text"]')?.textContent ?? "",
      from: m.dataset.sender,
      state: m.querySelector('[data-testid="widget-message-status"]')?.dataset.state ?? "",
      id: m.dataset.messageId ?? "",
    }));
  });
}

/** Fails when message nodes hold elements that only markup could have made. */
async function assertNoMarkupInMessages(page, who) {
  const found = await page.evaluate(() => {
    const out = [];
    // The only images allowed: a file's picture, as the desk (a blob: URL) or the widget (a link or a blob: URL) shows it.
    const scan = (root, sel, picture, src) => {
      for (const m of root.querySelectorAll(sel)) {
        for (const e of m.querySelectorAll("img, script, iframe, object, embed")) {
          const isPicture = e.tagName === "IMG" && e.matches(picture) && src.test(e.getAttribute("src") ?? "") && ![...e.attributes].some((a) => a.name.startsWith("on"));
          if (!isPicture) out.push(`${e.tagName} in ${m.outerHTML.slice(0, 200)}`);
        }
      }
    };
    scan(document, '[data-testid="message"], [data-testid="note"], [data-testid="transfer-note"], [data-testid="offer"]', '[data-testid="attachment-image"]', /^blob:/);
    const root = document.querySelector("parley-chat")?.shadowRoot;
    // The widget shows an operator's picture from its link, the customer's own from the page's memory.
    if (root) scan(root, '[data-testid="widget-message"]', ".files > a > img", /^(https?:\/\/|blob:)/);
    return out;
  });
  if (found.length) fail(`${who}: elements made from message text: ${found.join("; ")}`);
}

/** axe-core's source, run in a page through the DevTools protocol (the desk's CSP allows no inline script). */
const AXE = fs.readFileSync(new URL("./node_modules/axe-core/axe.min.js", import.meta.url), "utf8");

/** WCAG 2 A and AA as axe-core checks them (labels, names, roles, contrast, …), open shadow roots included. */
async function assertAccessible(page, who) {
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(AXE);
  const { violations, passed } = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
    return {
      violations: r.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`),
      passed: r.passes.length,
    };
  });
  if (violations.length) fail(`${who} has accessibility violations: ${violations.join("; ")}`);
  // A check that looked at nothing proves nothing.
  if (passed < 10) fail(`axe-core passed only ${passed} rules on ${who}: it did not see the page`);
  log(`${who}: no WCAG 2.1 A/AA violations among the ${passed} rules axe-core applied`);
}

async function assertNotPwned(page, who) {
  const pwned = await page.evaluate(() => typeof window.__pwned);
  if (pwned !== "undefined") fail(`${who}: window.__pwned is ${pwned}: a payload ran as script`);
}

// ───────────────────────────── the run ─────────────────────────────

const closers = [];
const pages = {};
let currentStep = "";

async function screenshotAll(prefix, mainPage) {
  for (const [name, page] of Object.entries(pages)) {
    if (!page || page.isClosed()) continue;
    // The step's own page as failure-<step>.png, the others beside it.
    const file = page === mainPage ? `${prefix}.png` : `${prefix}-${name}.png`;
    try {
      await page.screenshot({ path: path.join(ARTIFACTS, file), fullPage: true, timeout: 5000 });
      console.error(`screenshot: ${path.join(ARTIFACTS, file)}`);
    } catch (e) {
      console.error(`screenshot ${file} not taken: ${e.message}`);
    }
  }
}

let currentPage = null;

/** Runs one step; on failure, screenshots (the step's page as failure-<step>.png) and a clear message. */
async function step(name, mainPage, fn) {
  currentStep = name;
  currentPage = mainPage;
  log(`step ${name}`);
  try {
    return await fn();
  } catch (e) {
    await screenshotAll(`failure-${name}`, mainPage);
    const err = new ScenarioError(`step ${name} failed: ${e.message}`);
    if (!(e instanceof ScenarioError)) err.detail = e.stack;
    throw err;
  }
}

/** Collects what a page says on its console and the errors it throws. */
function watch(page, who, pageErrors) {
  page.on("pageerror", (e) => {
    pageErrors.push(`${who}: ${e.message}`);
    console.error(`[${who} pageerror] ${e.message}`);
  });
  page.on("response", (r) => {
    if (r.status() >= 400) console.error(`[${who} http ${r.status()}] ${r.request().method()} ${r.url()}`);
  });
  page.on("console", (m) => {
    // A failed load is logged with its URL by the response listener above.
    if (/^Failed to load resource: the server responded/.test(m.text())) return;
    if (m.type() === "error" || m.type() === "warning") console.error(`[${who} console.${m.type()}] ${m.text()}`);
  });
}

async function loginDesk(page, who, token, deskUrl, connectedText) {
  await page.goto(`${deskUrl}/desk/`);
  await page.locator("#login-token").waitFor({ state: "visible", timeout: WAIT_MS });
  await page.locator("#login-token").fill(token);
  await page.locator("#login-submit").click();
  await until(`${who}'s desk connects`, async () => {
    const state = await page.locator("#connection").getAttribute("data-state");
    const text = await page.locator("#connection-text").textContent();
    return { ok: state === "connected" && text === connectedText, state, text };
  });
  // Online, through the status control.
  await page.locator("#status").selectOption("online");
  await until(`${who} is online`, async () => {
    const status = await page.locator("#status-current").getAttribute("data-status");
    return { ok: status === "online", status, text: await page.locator("#status-current").textContent() };
  });
  const name = (await page.locator("#me-name").textContent())?.trim() ?? "";
  if (!name) fail(`${who}'s desk shows no operator name`);
  // Sign-in keeps the token out of the URL and out of localStorage.
  if (page.url().includes(token)) fail(`${who}'s token is in the URL`);
  const inLocal = await page.evaluate((tok) => Object.keys(localStorage).some((k) => (localStorage.getItem(k) ?? "").includes(tok)), token);
  if (inLocal) fail(`${who}'s token is in localStorage`);
  return name;
}

async function deskReply(page, words) {
  await page.locator("#reply-text").fill(words);
  await page.locator("#reply-send").click();
  written.push(words);
}

async function widgetSend(page, words) {
  const input = page.locator('[data-testid="widget-input"]');
  await input.fill(words);
  await page.locator('[data-testid="widget-send"]').click();
  written.push(words);
}

const SETTLED_DESK = new Set(["accepted", "sent", "delivered", "read"]);
const SETTLED_WIDGET = new Set(["sent", "delivered", "read"]);

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of fs.readdirSync(ARTIFACTS)) {
    if (/^(failure-.*|desk-anna|desk-boris|widget|supervisor)\.png$/.test(f)) fs.rmSync(path.join(ARTIFACTS, f));
  }
  const pageErrors = [];
  const bypassed = [];
  let conversationId = "";
  let customerLabel = "";

  // 1. Proxies in front of both services.
  const [deskProxy, ingestProxy] = await step("01-proxies", null, async () => {
    const d = await startProxy("desk", DESK_URL);
    closers.push(() => d.close());
    const i = await startProxy("ingest", INGEST_URL);
    closers.push(() => i.close());
    return [d, i];
  });

  // 2. The shop, on an origin of its own, embeds the widget from the ingest proxy.
  const shop = await step("02-shop", null, async () => {
    const s = await startShop(`${ingestProxy.url}/widget.js`);
    closers.push(() => s.close());
    const origins = new Set([new URL(s.url).origin, new URL(deskProxy.url).origin, new URL(ingestProxy.url).origin]);
    if (origins.size !== 3) fail(`the shop, desk and ingest must be three origins: ${[...origins]}`);
    return s;
  });

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  closers.unshift(() => browser.close());
  const newPage = async (who, locale, viewport) => {
    const context = await browser.newContext({ locale, viewport, serviceWorkers: "block" });
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    watch(page, who, pageErrors);
    // Every request the browser makes goes through a proxy (or to the shop).
    page.on("request", (r) => {
      const u = r.url();
      if (u.startsWith(DESK_URL) || u.startsWith(INGEST_URL)) bypassed.push(`${who}: ${u}`);
    });
    page.on("websocket", (ws) => {
      const u = ws.url().replace(/^ws/, "http");
      if (u.startsWith(DESK_URL) || u.startsWith(INGEST_URL)) bypassed.push(`${who}: ${ws.url()}`);
    });
    pages[who] = page;
    return page;
  };

  // 3. Anna's desk, in Russian.
  const anna = await newPage("anna", "ru-RU", { width: 1440, height: 900 });
  const annaName = await step("03-anna-online", anna, () => loginDesk(anna, "Anna", ANNA_TOKEN, deskProxy.url, "На связи"));
  log(`Anna is "${annaName}"`);

  // 4. The customer on the shop page opens the widget and writes.
  const shopPage = await newPage("customer", "ru-RU", { width: 1280, height: 860 });
  await step("04-customer-writes", shopPage, async () => {
    await shopPage.goto(shop.url);
    const src = await shopPage.locator("script[data-tenant]").getAttribute("src");
    if (!src.startsWith(ingestProxy.url)) fail(`the widget is not loaded through the ingest proxy: ${src}`);
    const launcher = shopPage.locator('[data-testid="widget-launcher"]');
    await launcher.waitFor({ state: "visible" });
    await launcher.click();
    await shopPage.locator('[data-testid="widget-panel"]').waitFor({ state: "visible" });
    await until("the widget connects", async () => {
      const state = await shopPage.locator('[data-testid="widget-connection"]').getAttribute("data-state");
      return { ok: state === "connected", state };
    });
    await widgetSend(shopPage, TEXTS.customer1);
    await until("the customer's message is in the widget, once, as text", async () => {
      const list = (await widgetMessages(shopPage)) ?? [];
      const mine = list.filter((m) => m.text === TEXTS.customer1);
      return { ok: mine.length === 1 && mine[0].from === "customer", mine, all: list.map((m) => m.text) };
    });
    await until("the server accepted the customer's message", async () => {
      const mine = ((await widgetMessages(shopPage)) ?? []).filter((m) => m.text === TEXTS.customer1);
      return { ok: mine.length === 1 && SETTLED_WIDGET.has(mine[0].state), mine };
    });
  });

  // 5. Anna gets the offer with its countdown, accepts, and sees the message as text.
  await step("05-anna-accepts", anna, async () => {
    const offer = anna.locator('[data-testid="offer"]');
    await offer.first().waitFor({ state: "visible" });
    const offers = await offer.count();
    if (offers !== 1) fail(`Anna has ${offers} offers, expected 1`);
    conversationId = (await offer.getAttribute("data-conversation-id")) ?? "";
    if (!/\S/.test(conversationId)) fail("the offer card names no conversation");
    const countdown = offer.locator('[data-testid="offer-countdown"]');
    await countdown.waitFor({ state: "visible" });
    const first = await until("the offer shows a countdown", async () => {
      const t = (await countdown.textContent()) ?? "";
      const m = /(\d+):(\d\d)/.exec(t);
      return { ok: !!m, text: t, seconds: m ? Number(m[1]) * 60 + Number(m[2]) : NaN };
    });
    if (!(first.seconds > 0 && first.seconds <= 60)) fail(`the countdown says ${first.text}: expected at most the queue's 60 s`);
    await until("the countdown counts down", async () => {
      const t = (await countdown.textContent()) ?? "";
      const m = /(\d+):(\d\d)/.exec(t);
      const seconds = m ? Number(m[1]) * 60 + Number(m[2]) : NaN;
      return { ok: seconds < first.seconds, was: first.text, now: t };
    });
    await offer.locator('[data-testid="offer-accept"]').click();
    await until("the offer card goes away", async () => ({ ok: (await offer.count()) === 0, offers: await offer.count() }));
    await anna.locator("#conversation-view").waitFor({ state: "visible" });
    const item = anna.locator(`[data-testid="conversation-item"][data-conversation-id="${conversationId}"]`);
    await until("the conversation is in Anna's list and open", async () => ({
      ok: (await item.count()) === 1 && (await item.getAttribute("aria-current")) === "true",
      items: await item.count(),
    }));
    await until("the customer's message is shown once, as text", async () => {
      const found = await deskMessages(anna, TEXTS.customer1);
      return { ok: found.length === 1 && found[0].sender === "customer" && found[0].conversationId === conversationId, found };
    });
    // Who the customer is comes from history, which may lag the offer by a moment.
    customerLabel = (
      await until("Anna's desk shows who the customer is (history's customer record: name and contacts)", async () => {
        const name = ((await anna.locator("#conv-name").textContent()) ?? "").trim();
        const card = ((await anna.locator('[data-testid="conversation-name"]').first().textContent()) ?? "").trim();
        const contacts = await anna.locator("#info-body li").count();
        return { ok: !!name && name !== "Клиент" && card === name && contacts > 0, name, card, contacts };
      })
    ).name;
    await assertNoMarkupInMessages(anna, "Anna's desk");
  });
  log(`conversation ${conversationId} with ${customerLabel}`);

  // 6. Anna replies; the customer sees it, with Anna's name.
  await step("06-anna-replies", shopPage, async () => {
    await deskReply(anna, TEXTS.anna1);
    await until("Anna's reply is accepted in her desk", async () => {
      const found = await deskMessages(anna, TEXTS.anna1);
      return { ok: found.length === 1 && SETTLED_DESK.has(found[0].delivery), found };
    });
    await until("the widget shows Anna's reply once, as text", async () => {
      const list = (await widgetMessages(shopPage)) ?? [];
      const got = list.filter((m) => m.text === TEXTS.anna1);
      return { ok: got.length === 1 && got[0].from === "operator", got, all: list.map((m) => m.text) };
    });
    await until("the widget names the operator", async () => {
      const shown = ((await shopPage.locator('[data-testid="widget-operator"]').textContent()) ?? "").trim();
      const visible = await shopPage.locator('[data-testid="widget-operator"]').isVisible();
      return { ok: visible && shown === annaName, shown, visible, expected: annaName };
    });
    await assertNoMarkupInMessages(shopPage, "the widget");
  });

  // 6b. Anna attaches a picture (and a second file she takes back) to a reply; the customer sees the picture.
  await step("06b-anna-sends-a-picture", shopPage, async () => {
    const chips = anna.locator('#attach-list [data-testid="attachment-chip"]');
    await anna.locator("#attach-input").setInputFiles([
      { name: FILE_NAME, mimeType: "image/png", buffer: makePng(24, 16, [43, 76, 63]) },
      { name: "лишний.txt", mimeType: "text/plain", buffer: Buffer.from("не тот файл\n") },
    ]);
    await until("both files upload and show as chips, their names as text", async () => {
      const got = await chips.evaluateAll((els) =>
        els.map((c) => ({
          name: c.querySelector('[data-testid="attachment-chip-name"]')?.textContent ?? "",
          state: c.dataset.state,
          id: c.dataset.attachmentId ?? "",
          elements: c.querySelectorAll("b, img, script").length,
          remove: c.querySelector('[data-testid="attachment-remove"]')?.getAttribute("aria-label") ?? "",
        })),
      );
      const error = (await anna.locator("#reply-error").textContent()) ?? "";
      if (error) fail(`the upload failed: ${error}`);
      return {
        ok: got.length === 2 && got.every((c) => c.state === "ready" && c.id && !c.elements && c.remove.includes(c.name)) && got[0].name === FILE_NAME,
        got,
      };
    });
    if (await anna.locator("#reply-send").isDisabled()) fail("the send button stays disabled after the uploads");
    await chips.nth(1).locator('[data-testid="attachment-remove"]').click();
    await until("the second file is taken back", async () => ({ ok: (await chips.count()) === 1, chips: await chips.count() }));
    const fileId = (await chips.first().getAttribute("data-attachment-id")) ?? "";
    await deskReply(anna, TEXTS.annaFile);
    await until("Anna's reply with the picture is accepted, and the composer's files are cleared", async () => {
      const found = await deskMessages(anna, TEXTS.annaFile);
      return { ok: found.length === 1 && SETTLED_DESK.has(found[0].delivery) && (await chips.count()) === 0, found, chips: await chips.count() };
    });
    await until("Anna's desk shows the picture in her message", async () => {
      const pics = await anna.evaluate((wanted) => {
        const m = [...document.querySelectorAll('#messages [data-testid="message"]')].filter((n) => n.querySelector('[data-testid="message-text"]')?.textContent === wanted);
        return m.map((n) => [...n.querySelectorAll('[data-testid="attachment"]')].map((a) => ({ id: a.dataset.attachmentId, loaded: (a.querySelector("img")?.naturalWidth ?? 0) > 0 })));
      }, TEXTS.annaFile);
      return { ok: pics.length === 1 && pics[0].length === 1 && pics[0][0].id === fileId && pics[0][0].loaded, pics };
    });
    await until("the widget shows Anna's reply once, with the picture loaded from the chat server", async () => {
      const got = await shopPage.evaluate((wanted) => {
        const root = document.querySelector("parley-chat")?.shadowRoot;
        if (!root) return null;
        return [...root.querySelectorAll('[data-testid="widget-message"]')]
          .filter((m) => m.querySelector('[data-testid="widget-message-text"]')?.textContent === wanted)
          .map((m) => {
            const imgs = [...m.querySelectorAll("img")];
            imgs[0]?.scrollIntoView();
            return { from: m.dataset.sender, images: imgs.map((i) => ({ src: i.getAttribute("src"), alt: i.alt, width: i.naturalWidth })) };
          });
      }, TEXTS.annaFile);
      const one = got?.length === 1 ? got[0] : null;
      const img = one?.images.length === 1 ? one.images[0] : null;
      return { ok: !!img && one.from === "operator" && img.width === 24 && img.alt === FILE_NAME && img.src.startsWith(ingestProxy.url), got };
    });
    await assertNoMarkupInMessages(anna, "Anna's desk");
    await assertNoMarkupInMessages(shopPage, "the widget");
  });

  // 6c. The customer attaches a picture in the widget; Anna's desk shows it inline.
  await step("06c-customer-sends-a-picture", anna, async () => {
    const chips = shopPage.locator('[data-testid="widget-attachment"]');
    await shopPage.locator('[data-testid="widget-file-input"]').setInputFiles([
      { name: CUSTOMER_FILE_NAME, mimeType: "image/png", buffer: makePng(20, 12, [200, 60, 40]) },
    ]);
    await until("the widget uploads the picture and shows its name as text", async () => {
      const got = await chips.evaluateAll((els) =>
        els.map((c) => ({ state: c.dataset.state, name: c.querySelector(".chip-name")?.textContent ?? "", elements: c.querySelectorAll("i, b, img, script").length })),
      );
      const error = await shopPage.locator('[data-testid="widget-error"]').evaluate((e) => (e.hidden ? "" : e.textContent));
      if (error) fail(`the widget's upload failed: ${error}`);
      return { ok: got.length === 1 && got[0].state === "ready" && got[0].name === CUSTOMER_FILE_NAME && !got[0].elements, got };
    });
    await widgetSend(shopPage, TEXTS.customerFile);
    await until("the widget shows the customer's message with the picture, and the composer's files are cleared", async () => {
      const got = await shopPage.evaluate((wanted) => {
        const root = document.querySelector("parley-chat")?.shadowRoot;
        return [...(root?.querySelectorAll('[data-testid="widget-message"]') ?? [])]
          .filter((m) => m.querySelector('[data-testid="widget-message-text"]')?.textContent === wanted)
          .map((m) => ({ from: m.dataset.sender, widths: [...m.querySelectorAll("img")].map((i) => i.naturalWidth) }));
      }, TEXTS.customerFile);
      return { ok: got.length === 1 && got[0].from === "customer" && show(got[0].widths) === show([20]) && (await chips.count()) === 0, got };
    });
    await until("Anna's desk shows the customer's picture in the message", async () => {
      const pics = await anna.evaluate((wanted) => {
        const m = [...document.querySelectorAll('#messages [data-testid="message"]')].filter((n) => n.querySelector('[data-testid="message-text"]')?.textContent === wanted);
        return m.map((n) => [...n.querySelectorAll('[data-testid="attachment"]')].map((a) => (a.querySelector("img")?.naturalWidth ?? 0)));
      }, TEXTS.customerFile);
      return { ok: pics.length === 1 && show(pics[0]) === show([20]), pics };
    });
    await assertNoMarkupInMessages(anna, "Anna's desk");
    await assertNoMarkupInMessages(shopPage, "the widget");
  });

  // 7. The network drops on both sides while each writes; both come back by themselves.
  await step("07-network-drop", anna, async () => {
    const cutAt = Date.now();
    const droppedDesk = deskProxy.cut();
    const droppedIngest = ingestProxy.cut();
    log(`network cut: ${droppedDesk} desk and ${droppedIngest} ingest connections dropped`);
    if (!droppedDesk || !droppedIngest) fail(`nothing to cut: desk ${droppedDesk}, ingest ${droppedIngest} open connections`);
    await until("Anna's desk notices the drop", async () => {
      const state = await anna.locator("#connection").getAttribute("data-state");
      return { ok: state === "reconnecting", state };
    });
    await until("the widget notices the drop", async () => {
      const state = await shopPage.locator('[data-testid="widget-connection"]').getAttribute("data-state");
      return { ok: state !== "connected", state };
    });
    await widgetSend(shopPage, TEXTS.customerCut);
    await deskReply(anna, TEXTS.annaCut);
    await until("the customer's message waits as sending in the widget", async () => {
      const mine = ((await widgetMessages(shopPage)) ?? []).filter((m) => m.text === TEXTS.customerCut);
      return { ok: mine.length === 1 && mine[0].state === "sending", mine };
    });
    await until("Anna's reply waits as pending in the desk", async () => {
      const found = await deskMessages(anna, TEXTS.annaCut);
      return { ok: found.length === 1 && (found[0].delivery === "queued" || found[0].delivery === "sending"), found };
    });
    const left = CUT_MS - (Date.now() - cutAt);
    if (left > 0) await new Promise((r) => setTimeout(r, left)); // the cut itself: the one fixed wait
    // Still pending at the end of the cut: nothing got through.
    const stillDesk = await deskMessages(anna, TEXTS.annaCut);
    const stillWidget = ((await widgetMessages(shopPage)) ?? []).filter((m) => m.text === TEXTS.customerCut);
    if (stillWidget.length !== 1 || stillWidget[0].state !== "sending") fail(`the customer's message settled while the network was cut: ${show(stillWidget)}`);
    if (stillDesk.length !== 1 || SETTLED_DESK.has(stillDesk[0].delivery)) fail(`Anna's reply settled while the network was cut: ${show(stillDesk)}`);
    deskProxy.restore();
    ingestProxy.restore();
    log(`network restored after ${Date.now() - cutAt} ms (refused meanwhile: desk ${deskProxy.refused}, ingest ${ingestProxy.refused})`);

    await until("Anna's desk reconnects by itself", async () => {
      const state = await anna.locator("#connection").getAttribute("data-state");
      return { ok: state === "connected" && (await anna.locator("#connection-text").textContent()) === "На связи", state };
    }, 20000);
    await until("the widget reconnects by itself", async () => {
      const state = await shopPage.locator('[data-testid="widget-connection"]').getAttribute("data-state");
      const said = await shopPage.locator('[data-testid="widget-connection"]').textContent();
      return { ok: state === "connected" && said === "В сети", state, said };
    }, 20000);
    await until("the widget's connection warning goes away", async () => {
      const error = shopPage.locator('[data-testid="widget-error"]');
      return { ok: await error.isHidden(), error: await error.textContent() };
    });
    await until("the desk shows the customer's offline message once, and its own reply once and settled", async () => {
      const cust = await deskMessages(anna, TEXTS.customerCut);
      const own = await deskMessages(anna, TEXTS.annaCut);
      return {
        ok: cust.length === 1 && cust[0].sender === "customer" && own.length === 1 && own[0].sender === "operator" && SETTLED_DESK.has(own[0].delivery),
        customer: cust,
        own,
      };
    });
    await until("the widget shows Anna's offline reply once, and its own message once and sent", async () => {
      const list = (await widgetMessages(shopPage)) ?? [];
      const reply = list.filter((m) => m.text === TEXTS.annaCut);
      const own = list.filter((m) => m.text === TEXTS.customerCut);
      return {
        ok: reply.length === 1 && reply[0].from === "operator" && own.length === 1 && SETTLED_WIDGET.has(own[0].state),
        reply,
        own,
      };
    });
    // Every message so far, exactly once on both sides.
    const deskAll = counts(await deskTexts(anna, conversationId));
    const widgetAll = counts(((await widgetMessages(shopPage)) ?? []).filter((m) => m.from !== "system").map((m) => m.text));
    for (const t of written) {
      if (deskAll.get(t) !== 1) fail(`Anna's desk shows ${JSON.stringify(t)} ${deskAll.get(t) ?? 0} times`);
      if (widgetAll.get(t) !== 1) fail(`the widget shows ${JSON.stringify(t)} ${widgetAll.get(t) ?? 0} times`);
    }
    await assertNoMarkupInMessages(anna, "Anna's desk");
    await assertNoMarkupInMessages(shopPage, "the widget");
    await anna.screenshot({ path: path.join(ARTIFACTS, "desk-anna.png"), fullPage: true });
  });

  // 8. Boris comes online; Anna transfers the conversation to him with a note.
  const boris = await newPage("boris", "en-US", { width: 1440, height: 900 });
  const borisName = await step("08-boris-online", boris, () => loginDesk(boris, "Boris", BORIS_TOKEN, deskProxy.url, "Connected"));
  log(`Boris is "${borisName}"`);

  await step("08-anna-transfers", anna, async () => {
    // A moment after the reconnect, still every message once (a late replay would show twice).
    const deskAll = counts(await deskTexts(anna, conversationId));
    for (const t of written) if (deskAll.get(t) !== 1) fail(`Anna's desk shows ${JSON.stringify(t)} ${deskAll.get(t) ?? 0} times`);
    await anna.locator("#transfer-open").click();
    const dialog = anna.locator("#transfer-dialog");
    await dialog.waitFor({ state: "visible" });
    await anna.locator("#transfer-kind").selectOption("operator");
    await until("Boris is among the transfer targets", async () => {
      const options = await anna.locator("#transfer-target option").evaluateAll((os) => os.map((o) => o.value));
      return { ok: options.includes("boris"), options };
    });
    await anna.locator("#transfer-target").selectOption("boris");
    await anna.locator("#transfer-note").fill(NOTE);
    await anna.locator("#transfer-submit").click();
    await until("the transfer dialog closes", async () => {
      const open = await dialog.evaluate((d) => d.open);
      const error = (await anna.locator("#transfer-error").textContent()) ?? "";
      if (error) fail(`the transfer failed: ${error}`);
      return { ok: !open, open };
    });
    await until("the conversation leaves Anna's list", async () => {
      const n = await anna.locator(`[data-testid="conversation-item"][data-conversation-id="${conversationId}"]`).count();
      const viewHidden = await anna.locator("#conversation-view").isHidden();
      return { ok: n === 0 && viewHidden, items: n, viewHidden };
    });
  });

  await step("08-boris-gets-history", boris, async () => {
    const offer = boris.locator(`[data-testid="offer"][data-conversation-id="${conversationId}"]`);
    const item = boris.locator(`[data-testid="conversation-item"][data-conversation-id="${conversationId}"]`);
    const how = await until("Boris gets the conversation (offered or assigned)", async () => {
      const offered = await offer.count();
      const assigned = await item.count();
      return { ok: offered > 0 || assigned > 0, offered, assigned };
    });
    if (how.offered > 0 && (await item.count()) === 0) {
      log("the transfer came to Boris as an offer: accepting");
      await offer.locator('[data-testid="offer-countdown"]').waitFor({ state: "visible" });
      await offer.locator('[data-testid="offer-accept"]').click();
    } else log("the transfer was assigned to Boris directly");
    await item.waitFor({ state: "visible" });
    if ((await item.getAttribute("aria-current")) !== "true") await item.click();
    await boris.locator("#conversation-view").waitFor({ state: "visible" });
    await until("Boris sees the whole history, every message once", async () => {
      const c = counts(await deskTexts(boris, conversationId));
      const wrong = written.filter((t) => c.get(t) !== 1).map((t) => [t.slice(0, 40), c.get(t) ?? 0]);
      return { ok: wrong.length === 0, wrong };
    });
    await until("Boris's desk names the customer as Anna's did", async () => {
      const name = ((await boris.locator("#conv-name").textContent()) ?? "").trim();
      return { ok: name === customerLabel, name, expected: customerLabel };
    });
    await until("Boris sees the transfer note", async () => {
      const notes = await boris.locator('[data-testid="transfer-note"]').allTextContents();
      return { ok: notes.length === 1 && notes[0] === NOTE, notes };
    });
    if (!(await boris.locator('[data-testid="transfer-note"]').isVisible())) fail("the transfer note is not visible in Boris's desk");
    await assertNoMarkupInMessages(boris, "Boris's desk");
  });

  // 9. Boris replies; the customer sees it, and his name.
  await step("09-boris-replies", shopPage, async () => {
    await deskReply(boris, TEXTS.boris1);
    await until("Boris's reply is accepted in his desk", async () => {
      const found = await deskMessages(boris, TEXTS.boris1);
      return { ok: found.length === 1 && SETTLED_DESK.has(found[0].delivery), found };
    });
    await until("the widget shows Boris's reply once, as text", async () => {
      const got = ((await widgetMessages(shopPage)) ?? []).filter((m) => m.text === TEXTS.boris1);
      return { ok: got.length === 1 && got[0].from === "operator", got };
    });
    await until("the widget names Boris now", async () => {
      const shown = ((await shopPage.locator('[data-testid="widget-operator"]').textContent()) ?? "").trim();
      return { ok: shown === borisName, shown, expected: borisName };
    });
  });

  // 9a. A WhatsApp customer writes; Anna answers with an approved template from the desk.
  await step("09a-anna-sends-a-whatsapp-template", anna, async () => {
    await until("ingest takes the WhatsApp message", async () => {
      const r = await fetch(`${INGEST_URL}/webhooks/${TENANT}/wa`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Hub-Signature-256": WA_SIGNATURE },
        body: WA_BODY,
      });
      return { ok: r.status === 200, status: r.status, body: await r.text() };
    });
    const item = anna.locator(`[data-testid="conversation-item"]:not([data-conversation-id="${conversationId}"])`);
    await item.first().waitFor({ state: "visible", timeout: WAIT_MS });
    await item.first().click();
    const open = anna.locator('[data-testid="template-open"]');
    await open.waitFor({ state: "visible", timeout: WAIT_MS });
    await open.click();
    await anna.locator("#template-name").fill("Order Update");
    await anna.locator("#template-language").fill("ru");
    await anna.locator("#template-params").fill("1001\nзавтра");
    await assertAccessible(anna, "the template dialog");
    await anna.locator("#template-submit").click();
    // A name WhatsApp would refuse is refused before anything is sent.
    const said = (await anna.locator("#template-error").textContent()) ?? "";
    if (!said || !(await anna.locator("#template-dialog").evaluate((d) => d.open))) fail(`a bad template name was not refused: ${show(said)}`);
    await anna.locator("#template-name").fill("order_update");
    await anna.locator("#template-submit").click();
    const shown = "[template order_update] 1001 · завтра";
    await until("Anna's desk shows the template as sent", async () => {
      const found = await deskMessages(anna, shown);
      const label = await anna.locator("#messages .msg-template").allTextContents();
      return { ok: found.length === 1 && SETTLED_DESK.has(found[0].delivery) && label.some((l) => l.includes("order_update")), found, label };
    });
    if (!(await anna.locator("#template-dialog").evaluate((d) => !d.open))) fail("the template dialog stayed open");
  });

  // 9b. A supervisor (no desk of their own) watches the team: Anna signing off shows at
  // once, from the team feed, before the view's next 5-second refresh.
  const sup = await newPage("supervisor", "en-US", { width: 1440, height: 900 });
  await step("09b-supervisor-sees-presence-live", sup, async () => {
    await sup.goto(`${deskProxy.url}/desk/`);
    await sup.locator("#login-token").fill(SUPERVISOR_TOKEN);
    await sup.locator("#login-submit").click();
    const statusOf = async (id) =>
      sup.locator(`[data-testid="sup-operator"][data-operator-id="${id}"]`).evaluateAll((els) => els.map((e) => e.closest("[data-status]")?.dataset.status));
    await until("the supervisor view shows Anna online, presence live", async () => {
      const anna = await statusOf("anna");
      const live = await sup.locator('[data-testid="sup-live"]').getAttribute("data-state");
      return { ok: show(anna) === show(["online"]) && live === "live", anna, live };
    });
    // Just after a refresh, so the next one is seconds away.
    const before = await sup.locator("#sup-updated").textContent();
    await until("the view refreshes", async () => {
      const now = await sup.locator("#sup-updated").textContent();
      return { ok: now !== before, before, now };
    }, 8000);
    const refreshed = await sup.locator("#sup-updated").textContent();
    const at = Date.now();
    await anna.locator("#status").selectOption("offline");
    await until("the supervisor sees Anna offline", async () => {
      const shown = await statusOf("anna");
      return { ok: show(shown) === show(["offline"]), shown };
    }, 4000);
    const after = await sup.locator("#sup-updated").textContent();
    if (after !== refreshed) fail(`the change showed only with a refresh (${refreshed} → ${after})`);
    log(`the supervisor saw Anna go offline ${Date.now() - at} ms after she chose it`);
    await assertAccessible(sup, "the supervisor view");
    await assertNotPwned(sup, "the supervisor view");
    await sup.screenshot({ path: path.join(ARTIFACTS, "supervisor.png"), fullPage: true });
  });

  // 10. The last look: everything once everywhere, nothing ran, screenshots.
  await step("10-final", shopPage, async () => {
    const widgetAll = counts(((await widgetMessages(shopPage)) ?? []).filter((m) => m.from !== "system").map((m) => m.text));
    const borisAll = counts(await deskTexts(boris, conversationId));
    for (const t of written) {
      if (widgetAll.get(t) !== 1) fail(`the widget shows ${JSON.stringify(t)} ${widgetAll.get(t) ?? 0} times`);
      if (borisAll.get(t) !== 1) fail(`Boris's desk shows ${JSON.stringify(t)} ${borisAll.get(t) ?? 0} times`);
    }
    const unexpected = [...widgetAll.keys()].filter((t) => !written.includes(t));
    if (unexpected.length) fail(`the widget shows messages nobody wrote: ${show(unexpected)}`);
    // The widget's own lines: each operator joined, once each.
    const system = ((await widgetMessages(shopPage)) ?? []).filter((m) => m.from === "system").map((m) => m.text);
    const joined = [`К чату подключился оператор: ${annaName}`, `К чату подключился оператор: ${borisName}`];
    if (show(system) !== show(joined)) fail(`the widget's notices are ${show(system)}, expected ${show(joined)}`);
    // Everything else shown is every message in the order written by each side.
    log(`widget shows: ${show(((await widgetMessages(shopPage)) ?? []).map((m) => `${m.from}: ${m.text.slice(0, 24)}`))}`);
    for (const [who, page] of [["Anna's desk", anna], ["Boris's desk", boris], ["the shop page", shopPage]]) {
      await assertNoMarkupInMessages(page, who);
      await assertNotPwned(page, who);
    }
    // The operators have seen every message the customer wrote: the widget marks them read.
    await until("the widget shows the customer's messages read (✓✓)", async () => {
      const marks = await shopPage.evaluate(() => {
        const root = document.querySelector("parley-chat")?.shadowRoot;
        return [...(root?.querySelectorAll('[data-testid="widget-message"][data-sender="customer"] [data-testid="widget-message-status"]') ?? [])].map((m) => m.dataset.state);
      });
      return { ok: marks.length >= 3 && marks.every((m) => m === "read"), marks };
    });
    await assertAccessible(boris, "Boris's desk with the conversation open");
    await assertAccessible(anna, "Anna's desk");
    await assertAccessible(shopPage, "the shop page with the widget open");
    if (bypassed.length) fail(`requests that went around the proxies: ${bypassed.join(" | ")}`);
    if (pageErrors.length) fail(`uncaught errors in the pages: ${pageErrors.join(" | ")}`);
    await boris.screenshot({ path: path.join(ARTIFACTS, "desk-boris.png"), fullPage: true });
    await shopPage.screenshot({ path: path.join(ARTIFACTS, "widget.png"), fullPage: true });
  });

  return { conversationId, texts: written };
}

async function shutdown() {
  for (const close of closers.splice(0)) {
    try {
      await Promise.race([close(), new Promise((r) => setTimeout(r, 5000))]);
    } catch {
      // Closing what is already gone.
    }
  }
}

const limit = setTimeout(async () => {
  console.error(`scenario: over ${SCENARIO_MS / 1000} s, in step ${currentStep}`);
  await screenshotAll(`failure-${currentStep || "timeout"}`, currentPage);
  await shutdown();
  process.exit(1);
}, SCENARIO_MS);

try {
  const summary = await main();
  clearTimeout(limit);
  await shutdown();
  log("scenario passed");
  console.log(JSON.stringify(summary));
  process.exit(0);
} catch (e) {
  clearTimeout(limit);
  console.error(`scenario FAILED: ${e instanceof ScenarioError ? e.message : e.stack ?? e}`);
  if (e.detail) console.error(e.detail);
  await shutdown();
  process.exit(1);
}
