// Parley customer chat widget: the script a tenant's site embeds so its visitors can chat with the contact center; it speaks the web chat protocol of crates/parley-ingest/src/webchat.rs and is served by ingest as GET /widget.js.
/*
 * Embed:
 *   <script src="https://<ingest public>/widget.js" data-tenant="acme" data-channel="site" async></script>
 *   optional: data-lang="ru|en", data-title, data-color="#rgb|#rrggbb|name", data-position="right|left", data-open
 * or from the site's code:
 *   window.ParleyWidget.init({url, tenant, channel, lang,
 *     identity: {userId, signature, phone, name},   // signature: hex HMAC-SHA256 computed by the site's server
 *     theme: {color, title, position}, open})
 *   window.ParleyWidget.open() / .close() / .destroy()
 * Calls made before this script loaded may wait in a queue: window.ParleyWidget = {q: [["init", {...}], ["open"]]}.
 *
 * Plain JavaScript, no dependencies. All UI lives in an open shadow root; untrusted text reaches the page only
 * through textContent, links only with http(s)/blob URLs; no eval, no inline handlers, no innerHTML.
 */
(function () {
  'use strict';

  const SCRIPT = document.currentScript || findScript();
  const previous = window.ParleyWidget;
  if (previous && previous.__parley) return; // loaded twice: the first copy serves

  const VERSION = '1';
  const PING_EVERY_MS = 20000; // a ping when the socket was quiet this long; dead after 2x without a frame
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const WS_FAILURES_BEFORE_POLL = 3;
  const WS_RETRY_FROM_POLL_MS = 60000;
  const POLL_TIMEOUT_MS = 40000; // the server answers within 25 s
  const NOT_FOUND_RETRY_MS = 30000;
  const TYPING_EVERY_MS = 2000;
  const TYPING_SHOWN_MS = 6000;
  const RESEND_AFTER_MS = 15000;
  const TOKEN_MARGIN_MS = 5 * 60 * 1000;
  const ACTIVE_FOR_MS = 24 * 3600 * 1000;
  const MAX_TEXT_CHARS = 4096;
  const MAX_FILES = 10;
  const MAX_KEPT = 200;
  const MAX_CONVS_KEPT = 20;
  const STATE_RANK = { sending: 0, sent: 1, accepted: 1, delivered: 2, read: 3 };

  // ---- Every visible string, in both languages ------------------------------------------------------------

  const STRINGS = {
    en: {
      title: 'Chat with us',
      dialog: 'Chat with support',
      launcher: 'Open chat',
      launcherUnread: 'Open chat, {n} new',
      close: 'Close chat',
      log: 'Messages',
      inputLabel: 'Your message',
      placeholder: 'Write a message…',
      placeholderEnded: 'Write to start a new conversation…',
      send: 'Send',
      you: 'You',
      operator: 'Operator',
      bot: 'Assistant',
      system: 'Notice',
      connecting: 'Connecting…',
      connected: 'Online',
      reconnecting: 'Reconnecting…',
      queuePos: 'You are #{n} in the queue',
      queuePosWait: 'You are #{n} in the queue, {t}',
      queueWaiting: 'Waiting for an operator…',
      queueWaitingWait: 'Waiting for an operator, {t}',
      lessMinute: 'less than a minute',
      aboutMinutes: 'about {n} min',
      aboutHours: 'about {n} h',
      waitingFor: '{name}, who helped you before, will answer shortly',
      waitingForAnyone: 'The operator who helped you before will answer shortly',
      closedUntil: 'We are closed now and open {t}. Leave a message and we will answer then.',
      closedNow: 'We are closed now. Leave a message and we will answer when we open.',
      joined: '{name} joined the chat',
      joinedAnon: 'An operator joined the chat',
      typing: '{name} is typing…',
      typingAnon: 'The operator is typing…',
      ended: 'The conversation has ended.',
      endedNotice: 'The conversation has ended. Write here to start a new one.',
      stSending: 'Sending',
      stSent: 'Sent',
      stDelivered: 'Delivered',
      stRead: 'Read',
      stFailed: 'Not sent',
      file: 'File',
      attach: 'Attach a file',
      removeFile: 'Remove {name}',
      uploading: 'uploading…',
      uploadFailed: 'not uploaded',
      errFileType: 'This kind of file cannot be sent: pictures, sound, video, PDF, office documents, text or zip.',
      errFileTooBig: 'The file is too large.',
      errFileUpload: 'The file could not be uploaded. Please try again.',
      errFilesWait: 'Wait until the files have uploaded.',
      errTooManyFiles: 'At most {n} files a message.',
      errNotFound: 'The chat is not available right now. We will keep trying.',
      errForbidden: 'The chat cannot be opened on this page.',
      errIdentity: 'We could not confirm your account. Please reload the page or sign in again.',
      errSetup: 'The chat could not be opened. Please try again later.',
      errMessage: 'This message could not be sent.',
      errTooLong: 'The message is too long: at most {n} characters.',
      errBusy: 'The chat is busy right now. Your messages will be sent as soon as possible.',
      errOffline: 'No connection. Your messages will be sent when it is back.',
      errGeneric: 'Something went wrong. We will keep trying.',
    },
    ru: {
      title: 'Напишите нам',
      dialog: 'Чат с поддержкой',
      launcher: 'Открыть чат',
      launcherUnread: 'Открыть чат, новых: {n}',
      close: 'Закрыть чат',
      log: 'Сообщения',
      inputLabel: 'Ваше сообщение',
      placeholder: 'Напишите сообщение…',
      placeholderEnded: 'Напишите, чтобы начать новый разговор…',
      send: 'Отправить',
      you: 'Вы',
      operator: 'Оператор',
      bot: 'Помощник',
      system: 'Уведомление',
      connecting: 'Подключение…',
      connected: 'В сети',
      reconnecting: 'Переподключение…',
      queuePos: 'Вы №{n} в очереди',
      queuePosWait: 'Вы №{n} в очереди, {t}',
      queueWaiting: 'Ожидаем оператора…',
      queueWaitingWait: 'Ожидаем оператора, {t}',
      lessMinute: 'меньше минуты',
      aboutMinutes: 'около {n} мин',
      aboutHours: 'около {n} ч',
      waitingFor: 'Вам скоро ответит {name}, который уже помогал вам',
      waitingForAnyone: 'Вам скоро ответит оператор, который уже помогал вам',
      closedUntil: 'Сейчас мы не работаем, откроемся {t}. Оставьте сообщение — мы ответим.',
      closedNow: 'Сейчас мы не работаем. Оставьте сообщение — мы ответим, когда откроемся.',
      joined: 'К чату подключился оператор: {name}',
      joinedAnon: 'К чату подключился оператор',
      typing: '{name} печатает…',
      typingAnon: 'Оператор печатает…',
      ended: 'Разговор завершён.',
      endedNotice: 'Разговор завершён. Напишите, чтобы начать новый.',
      stSending: 'Отправляется',
      stSent: 'Отправлено',
      stDelivered: 'Доставлено',
      stRead: 'Прочитано',
      stFailed: 'Не отправлено',
      file: 'Файл',
      attach: 'Прикрепить файл',
      removeFile: 'Убрать {name}',
      uploading: 'загружается…',
      uploadFailed: 'не загружен',
      errFileType: 'Такой файл отправить нельзя: картинки, звук, видео, PDF, офисные документы, текст или zip.',
      errFileTooBig: 'Файл слишком большой.',
      errFileUpload: 'Не удалось загрузить файл. Попробуйте ещё раз.',
      errFilesWait: 'Подождите, пока файлы загрузятся.',
      errTooManyFiles: 'Не больше {n} файлов в сообщении.',
      errNotFound: 'Чат сейчас недоступен. Мы продолжаем попытки.',
      errForbidden: 'Чат нельзя открыть на этой странице.',
      errIdentity: 'Не удалось подтвердить вашу учётную запись. Обновите страницу или войдите снова.',
      errSetup: 'Не удалось открыть чат. Попробуйте позже.',
      errMessage: 'Это сообщение не удалось отправить.',
      errTooLong: 'Сообщение слишком длинное: не больше {n} символов.',
      errBusy: 'Чат сейчас перегружен. Сообщения будут отправлены, как только это станет возможно.',
      errOffline: 'Нет соединения. Сообщения отправятся, когда оно появится.',
      errGeneric: 'Что-то пошло не так. Мы продолжаем попытки.',
    },
  };

  function fmt(template, vars) {
    return template.replace(/\{(\w+)\}/g, (whole, k) => (vars && vars[k] != null ? String(vars[k]) : whole));
  }

  // ---- Small helpers --------------------------------------------------------------------------------------

  function findScript() {
    const all = document.getElementsByTagName('script');
    for (let i = all.length - 1; i >= 0; i--) {
      if (/\/widget\.js(?:[?#]|$)/.test(all[i].src || '') && all[i].hasAttribute('data-tenant')) return all[i];
    }
    return null;
  }

  function now() {
    return Date.now();
  }

  function newClientId() {
    try {
      if (window.crypto && typeof window.crypto.randomUUID === 'function') return window.crypto.randomUUID();
    } catch (e) {
      /* not a secure context: fall through */
    }
    const bytes = new Uint8Array(16);
    if (window.crypto && window.crypto.getRandomValues) window.crypto.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    let hex = '';
    for (let i = 0; i < bytes.length; i++) hex += (bytes[i] < 16 ? '0' : '') + bytes[i].toString(16);
    return hex;
  }

  function storageOf(kind) {
    try {
      const s = window[kind];
      const probe = '__parley_probe';
      s.setItem(probe, '1');
      s.removeItem(probe);
      return s;
    } catch (e) {
      return null; // disabled or sandboxed: the widget still works for this page view
    }
  }

  function readJson(store, key) {
    if (!store) return null;
    try {
      const v = store.getItem(key);
      return v ? JSON.parse(v) : null;
    } catch (e) {
      return null;
    }
  }

  function readString(store, key) {
    if (!store) return null;
    try {
      return store.getItem(key);
    } catch (e) {
      return null;
    }
  }

  function writeString(store, key, value) {
    if (!store) return true;
    try {
      if (value == null) store.removeItem(key);
      else store.setItem(key, value);
      return true;
    } catch (e) {
      return false;
    }
  }

  /** An http:, https: or blob: URL as an absolute string (a relative one read against
   *  `base`, the page's by default); null for anything else. */
  function safeUrl(raw, base) {
    if (typeof raw !== 'string' || !raw) return null;
    try {
      const u = new URL(raw, base || window.location.href);
      return u.protocol === 'https:' || u.protocol === 'http:' || u.protocol === 'blob:' ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  const CSS_WORDS = { inherit: 1, initial: 1, unset: 1, revert: 1, currentcolor: 1, transparent: 1 };

  /** `#rgb`, `#rrggbb` or a plain named color; null for anything else. */
  function validColor(c) {
    if (typeof c !== 'string') return null;
    c = c.trim().toLowerCase();
    if (/^#(?:[0-9a-f]{3}|[0-9a-f]{6})$/.test(c)) return c;
    if (/^[a-z]{3,30}$/.test(c) && !CSS_WORDS[c] && window.CSS && CSS.supports && CSS.supports('color', c)) return c;
    return null;
  }

  function luminance(rgb) {
    const ch = rgb.map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2];
  }

  function contrast(a, b) {
    const [hi, lo] = a > b ? [a, b] : [b, a];
    return (hi + 0.05) / (lo + 0.05);
  }

  function pickLang(lang) {
    const l = String(lang || '').toLowerCase().slice(0, 2);
    if (l === 'ru' || l === 'en') return l;
    const nav = (navigator.languages && navigator.languages[0]) || navigator.language || '';
    return /^ru\b/i.test(nav) ? 'ru' : 'en';
  }

  function codePoints(text) {
    let n = 0;
    for (const _ of text) n++; // eslint-disable-line no-unused-vars
    return n;
  }

  function codeForStatus(status) {
    if (status === 400) return 'invalid_argument';
    if (status === 401) return 'unauthenticated';
    if (status === 403) return 'permission_denied';
    if (status === 404) return 'not_found';
    if (status === 413) return 'too_large';
    return 'unavailable';
  }

  /** A refusal or a failure; `code` is the server's error code, or `network`. */
  function ChatError(code, status) {
    this.code = code;
    this.status = status || 0;
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const k of Object.keys(attrs)) {
        const v = attrs[k];
        if (v === null || v === undefined || v === false) continue;
        e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    if (children) for (const c of children) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    return e;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function icon(pathData) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', pathData);
    svg.appendChild(path);
    return svg;
  }
  const ICON_CHAT =
    'M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2zm3 6.5a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01z';
  const ICON_SEND = 'M3 20.5 21 12 3 3.5 3 10l12 2-12 2z';
  const ICON_ATTACH =
    'M16.5 6v11.5a4 4 0 0 1-8 0V5a2.5 2.5 0 0 1 5 0v10.5a1 1 0 0 1-2 0V6H10v9.5a2.5 2.5 0 0 0 5 0V5a4 4 0 0 0-8 0v12.5a5.5 5.5 0 0 0 11 0V6z';
  const ICON_CLOSE =
    'M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12 19 17.6 17.6 19 12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z';

  /** Text with its http(s) links as anchors; everything else as text nodes. */
  const URL_IN_TEXT = /\bhttps?:\/\/[^\s<>"'`]+/gi;
  function appendLinkified(parent, text) {
    let last = 0;
    URL_IN_TEXT.lastIndex = 0;
    let m;
    while ((m = URL_IN_TEXT.exec(text))) {
      const raw = m[0].replace(/[),.;:!?»”’\]]+$/, '');
      const href = raw ? safeUrl(raw) : null;
      if (!href) continue;
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      const a = el('a', { href: href, target: '_blank', rel: 'noopener noreferrer' });
      a.textContent = raw;
      parent.appendChild(a);
      last = m.index + raw.length;
      URL_IN_TEXT.lastIndex = last;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  /** Attachments as the widget keeps them: name, type and a URL only when it is safe to open. */
  /** The files of a message; their links are relative to the chat server (`base`). */
  function cleanAttachments(list, base) {
    if (!Array.isArray(list)) return undefined;
    const out = [];
    for (const a of list.slice(0, 20)) {
      if (!a || typeof a !== 'object') continue;
      out.push({
        name: String(a.file_name || a.name || '').slice(0, 255),
        mime: String(a.mime_type || '').toLowerCase().slice(0, 100),
        url: safeUrl(a.url, base),
      });
    }
    return out.length ? out : undefined;
  }

  // ---- Styles ---------------------------------------------------------------------------------------------

  const STYLES = `
:host{all:initial}
*,*::before,*::after{box-sizing:border-box}
[hidden]{display:none!important}
.root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;font-size:14px;line-height:1.45;
  font-weight:400;font-style:normal;color:#1b1f24;letter-spacing:normal;word-spacing:normal;text-align:left;text-transform:none;
  text-indent:0;direction:ltr;visibility:visible;-webkit-font-smoothing:antialiased}
button{font:inherit;margin:0}
.launcher{position:fixed;bottom:20px;right:20px;z-index:2147483000;width:56px;height:56px;border-radius:50%;border:0;padding:0;
  background:var(--pw-accent);color:var(--pw-on-accent);cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.28);display:flex;
  align-items:center;justify-content:center;transition:transform .15s ease}
.left .launcher{right:auto;left:20px}
.launcher:hover{transform:scale(1.06)}
.launcher svg{width:28px;height:28px;fill:currentColor}
.badge{position:absolute;top:-3px;right:-3px;min-width:20px;height:20px;padding:0 5px;border-radius:10px;background:#b3261e;
  color:#fff;font-size:12px;font-weight:700;line-height:20px;text-align:center;box-shadow:0 0 0 2px #fff}
.panel{position:fixed;bottom:88px;right:20px;z-index:2147483000;width:370px;max-width:calc(100vw - 40px);height:600px;
  max-height:calc(100vh - 108px);display:flex;flex-direction:column;background:#fff;border-radius:12px;
  box-shadow:0 10px 36px rgba(0,0,0,.3);overflow:hidden;animation:pw-in .18s ease-out}
.left .panel{right:auto;left:20px}
@keyframes pw-in{from{opacity:0;transform:translateY(10px)}to{opacity:1;transform:none}}
.header{display:flex;align-items:center;gap:10px;padding:12px 10px 12px 16px;background:var(--pw-accent);color:var(--pw-on-accent)}
.titles{flex:1;min-width:0}
.title{margin:0;font-size:16px;font-weight:600;line-height:1.3;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.operator{font-size:13px;line-height:1.3;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.conn{display:inline-flex;align-items:center;gap:6px;font-size:12px;white-space:nowrap}
.conn::before{content:"";flex:none;width:9px;height:9px;border-radius:50%;background:#f2b600;box-shadow:0 0 0 2px #fff}
.conn[data-state=connected]::before{background:#1e9e4a}
.conn[data-state=connected] .conn-text{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
.close{flex:none;width:36px;height:36px;border:0;border-radius:8px;padding:0;background:transparent;color:inherit;cursor:pointer;
  display:flex;align-items:center;justify-content:center}
.close:hover{background:rgba(127,127,127,.3)}
.close svg{width:20px;height:20px;fill:currentColor}
.queue{padding:8px 16px;background:#eef3fb;border-bottom:1px solid #d9e1ec;font-size:13px;color:#24303e}
.log{flex:1;min-height:0;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:6px;background:#fff;overscroll-behavior:contain}
.msg{display:flex;flex-direction:column;max-width:84%;align-self:flex-start;align-items:flex-start}
.msg[data-sender=customer]{align-self:flex-end;align-items:flex-end}
.msg[data-sender=system]{align-self:center;align-items:center;max-width:94%}
.bubble{padding:8px 12px;border-radius:14px;background:#eef1f5;color:#1b1f24;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}
.msg[data-sender=customer] .bubble{background:var(--pw-accent);color:var(--pw-on-accent);border-bottom-right-radius:4px}
.msg[data-sender=operator] .bubble,.msg[data-sender=bot] .bubble{border-bottom-left-radius:4px}
.msg[data-sender=system] .bubble{background:transparent;color:#4f5a68;font-size:12.5px;padding:2px 8px;text-align:center}
.bubble a{color:#0b57d0;text-decoration:underline}
.msg[data-sender=customer] .bubble a{color:inherit}
.files{display:flex;flex-direction:column;gap:6px;margin-top:6px}
.files img{display:block;max-width:100%;max-height:220px;border-radius:8px}
.meta{display:flex;gap:5px;align-items:center;margin-top:2px;font-size:11px;color:#5b6675}
.mark{letter-spacing:-2px;padding-right:2px}
.mark[data-state=read]{color:#0b57d0}
.mark[data-state=failed],.failed{color:#b3261e;letter-spacing:normal}
.typing{padding:0 16px 6px;font-size:12.5px;color:#4f5a68;font-style:italic}
.ended{margin:0 12px 8px;padding:8px 12px;background:#fff7df;border:1px solid #ead58c;border-radius:8px;font-size:13px;color:#3f3300}
.error{margin:0 12px 8px;padding:8px 12px;background:#fdecea;border:1px solid #f3c1bb;border-radius:8px;font-size:13px;color:#7d1a12}
.composer{display:flex;align-items:flex-end;gap:8px;padding:10px 12px;border-top:1px solid #dfe4ea;background:#fff}
.input{flex:1;display:block;resize:none;min-height:40px;max-height:120px;margin:0;padding:9px 12px;border:1px solid #9aa4b1;
  border-radius:10px;font:inherit;line-height:1.4;color:#1b1f24;background:#fff;overflow-y:auto}
.input::placeholder{color:#657080;opacity:1}
.send{flex:none;width:40px;height:40px;border:0;border-radius:10px;padding:0;background:var(--pw-accent);color:var(--pw-on-accent);
  cursor:pointer;display:flex;align-items:center;justify-content:center}
.send svg{width:20px;height:20px;fill:currentColor}
.attach{flex:none;width:36px;height:40px;border:0;border-radius:10px;padding:0;background:transparent;color:#3d4652;cursor:pointer;
  display:flex;align-items:center;justify-content:center}
.attach:hover{background:#eef1f5}
.attach svg{width:22px;height:22px;fill:currentColor}
.chips{display:flex;flex-wrap:wrap;gap:6px;padding:8px 12px 0;border-top:1px solid #dfe4ea;background:#fff}
.chip{display:inline-flex;align-items:center;gap:4px;max-width:100%;padding:3px 4px 3px 10px;border:1px solid #c5ccd6;border-radius:14px;
  font-size:12.5px;color:#1b1f24;background:#f6f8fa}
.chip[data-state=failed]{border-color:#b3261e;color:#7d1a12}
.chip-name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;max-width:180px}
.chip-state{color:#4f5a68}
.chip button{width:22px;height:22px;border:0;border-radius:50%;padding:0;background:transparent;color:inherit;cursor:pointer;font-size:15px;line-height:1}
.chip button:hover{background:#e2e6eb}
.vh{position:absolute!important;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;border:0}
:focus{outline:none}
:focus-visible{outline:3px solid #1b1f24;outline-offset:2px;box-shadow:0 0 0 2px #fff}
.input:focus-visible{outline-offset:0}
@media (max-width:480px){
  .panel{top:0;right:0;bottom:0;left:0;width:100%;max-width:none;height:100%;max-height:none;border-radius:0}
  .left .panel{left:0}
  .open .launcher{display:none}
}
@media (prefers-reduced-motion:reduce){
  *,*::before,*::after{animation:none!important;transition:none!important;scroll-behavior:auto!important}
  .launcher:hover{transform:none}
}
@media (forced-colors:active){
  .launcher,.send,.bubble{border:1px solid CanvasText}
}
`;

  // ---- The widget -----------------------------------------------------------------------------------------

  class Widget {
    constructor(cfg) {
      this.cfg = cfg;
      this.lang = cfg.lang;
      this.t = STRINGS[cfg.lang];
      this.api = `${cfg.base}webchat/${encodeURIComponent(cfg.tenant)}/${encodeURIComponent(cfg.channel)}/`;
      this.wsApi = this.api.replace(/^http/, 'ws');
      this.local = storageOf('localStorage');
      this.session = storageOf('sessionStorage');
      const scope = `parley:${cfg.tenant}:${cfg.channel}`;
      const who = cfg.identity ? `user:${cfg.identity.userId}` : 'visitor';
      this.visitorKey = `${scope}:visitor`;
      this.stateKey = `${scope}:${who}`;
      this.activeKey = `${scope}:${who}:active`;
      this.state = this.load();

      this.mode = typeof window.WebSocket === 'function' ? 'ws' : 'poll';
      this.gen = 0; // a new connection attempt makes earlier callbacks stale
      this.sock = null; // {ws, welcomed, openedAt, probe, gone}
      this.attempt = 0;
      this.wsFailures = 0;
      this.everConnected = false;
      this.halted = false; // a refusal that retrying does not cure: waits for the visitor
      this.started = false;
      this.dead = false;
      this.isOpen = false;
      this.nodes = new Map(); // item key -> element
      this.sentAt = new Map(); // client_id -> when last sent on this socket
      this.files = []; // files chosen for the next message: {key, name, mime, state, id, preview, abort}
      this.readInFlight = new Set();
      this.lastTypingAt = 0;
      this.errorKind = '';
      this.timers = {};
      this.onVisibility = () => this.visibilityChanged();
      this.onOnline = () => this.networkBack();
      this.onPageHide = () => this.persist();
    }

    // -- Persistence --

    load() {
      const saved = readJson(this.session, this.stateKey);
      const fresh = {
        v: 1,
        token: null,
        expiresAt: 0,
        customerId: null,
        lastSeq: 0,
        outbox: [],
        items: [],
        conv: null,
        convs: {},
        status: { kind: 'none' },
        operator: '',
        unread: 0,
        open: false,
      };
      if (!saved || saved.v !== 1) return fresh;
      const s = Object.assign(fresh, saved);
      s.lastSeq = Number(s.lastSeq) || 0;
      if (!Array.isArray(s.outbox)) s.outbox = [];
      if (!Array.isArray(s.items)) s.items = [];
      if (!s.convs || typeof s.convs !== 'object') s.convs = {};
      if (!s.status || typeof s.status !== 'object') s.status = { kind: 'none' };
      // Pictures of the visitor's own files were shown from this page's memory.
      for (const item of s.items) for (const f of item.att || []) if (f.own) f.url = undefined;
      return s;
    }

    persist() {
      const s = this.state;
      if (s.items.length > MAX_KEPT) s.items.splice(0, s.items.length - MAX_KEPT);
      const convIds = Object.keys(s.convs);
      if (convIds.length > MAX_CONVS_KEPT) {
        for (const id of convIds.slice(0, convIds.length - MAX_CONVS_KEPT)) if (id !== s.conv) delete s.convs[id];
      }
      let json = JSON.stringify(s);
      if (!writeString(this.session, this.stateKey, json)) {
        // Over the quota: keep the newest half of the transcript, never the outbox.
        s.items.splice(0, Math.ceil(s.items.length / 2));
        json = JSON.stringify(s);
        writeString(this.session, this.stateKey, json);
      }
    }

    visitorId() {
      const v = readString(this.local, this.visitorKey);
      return v && /^[A-Za-z0-9_-]{16,64}$/.test(v) ? v : null;
    }

    markActive(active) {
      writeString(this.local, this.activeKey, active ? String(now()) : null);
    }

    wasActive() {
      const at = Number(readString(this.local, this.activeKey));
      return at > 0 && now() - at < ACTIVE_FOR_MS;
    }

    // -- The DOM --

    mount() {
      const t = this.t;
      const cfg = this.cfg;
      this.host = document.createElement('parley-chat');
      this.host.setAttribute('data-parley-widget', VERSION);
      const shadow = this.host.attachShadow({ mode: 'open' });
      this.shadow = shadow;

      // A <style> inside the shadow root, plus the same rules as a constructed sheet where the browser has
      // them: a strict style-src CSP on the host page blocks the element but not the sheet.
      const style = el('style');
      style.textContent = STYLES;
      shadow.appendChild(style);
      try {
        if ('adoptedStyleSheets' in shadow && typeof CSSStyleSheet === 'function') {
          const sheet = new CSSStyleSheet();
          sheet.replaceSync(STYLES);
          shadow.adoptedStyleSheets = [sheet];
        }
      } catch (e) {
        /* the <style> alone */
      }

      const root = el('div', { class: 'root' + (cfg.theme.position === 'left' ? ' left' : '') });
      this.root = root;

      this.badge = el('span', { class: 'badge', 'aria-hidden': 'true', hidden: true });
      this.launcher = el(
        'button',
        {
          type: 'button',
          class: 'launcher',
          'data-testid': 'widget-launcher',
          'aria-label': t.launcher,
          'aria-expanded': 'false',
          'aria-controls': 'parley-panel',
        },
        [icon(ICON_CHAT), this.badge],
      );

      this.titleEl = el('div', { class: 'title', id: 'parley-title', role: 'heading', 'aria-level': '2' });
      this.titleEl.textContent = cfg.theme.title || t.title;
      this.operatorEl = el('div', { class: 'operator', 'data-testid': 'widget-operator', hidden: true });
      this.connText = el('span', { class: 'conn-text' });
      this.connEl = el('span', { class: 'conn', 'data-testid': 'widget-connection', 'data-state': 'connecting', role: 'status' }, [
        this.connText,
      ]);
      this.closeBtn = el('button', { type: 'button', class: 'close', 'aria-label': t.close, title: t.close }, [icon(ICON_CLOSE)]);
      const header = el('div', { class: 'header' }, [
        el('div', { class: 'titles' }, [this.titleEl, this.operatorEl]),
        this.connEl,
        this.closeBtn,
      ]);

      this.queueEl = el('div', { class: 'queue', 'data-testid': 'widget-queue', role: 'status', hidden: true });
      this.logEl = el('div', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-label': t.log, tabindex: '0' });
      this.typingEl = el('div', { class: 'typing', 'data-testid': 'widget-typing', 'aria-live': 'polite', hidden: true });
      this.endedEl = el('div', { class: 'ended', 'data-testid': 'widget-ended', role: 'status', hidden: true });
      this.endedEl.textContent = t.endedNotice;
      this.errorEl = el('div', { class: 'error', 'data-testid': 'widget-error', role: 'alert', hidden: true });

      this.input = el('textarea', {
        id: 'parley-input',
        class: 'input',
        'data-testid': 'widget-input',
        rows: '1',
        placeholder: t.placeholder,
        autocomplete: 'off',
        enterkeyhint: 'send',
      });
      const label = el('label', { for: 'parley-input', class: 'vh' }, [t.inputLabel]);
      this.sendBtn = el('button', { type: 'button', class: 'send', 'data-testid': 'widget-send', 'aria-label': t.send, title: t.send }, [
        icon(ICON_SEND),
      ]);
      this.attachBtn = el('button', { type: 'button', class: 'attach', 'data-testid': 'widget-attach', 'aria-label': t.attach, title: t.attach }, [
        icon(ICON_ATTACH),
      ]);
      this.fileInput = el('input', { type: 'file', multiple: '', hidden: true, 'data-testid': 'widget-file-input', tabindex: '-1' });
      this.chipsEl = el('div', { class: 'chips', 'data-testid': 'widget-attachments', hidden: true });
      const composer = el('div', { class: 'composer' }, [label, this.attachBtn, this.fileInput, this.input, this.sendBtn]);

      this.panel = el(
        'div',
        {
          class: 'panel',
          id: 'parley-panel',
          'data-testid': 'widget-panel',
          role: 'dialog',
          'aria-modal': 'false',
          'aria-label': cfg.theme.title || t.dialog,
          hidden: true,
        },
        [header, this.queueEl, this.logEl, this.typingEl, this.endedEl, this.errorEl, this.chipsEl, composer],
      );

      root.appendChild(this.panel);
      root.appendChild(this.launcher);
      shadow.appendChild(root);
      (document.body || document.documentElement).appendChild(this.host);
      this.applyColor(cfg.theme.color);

      this.launcher.addEventListener('click', () => (this.isOpen ? this.close(true) : this.open()));
      this.closeBtn.addEventListener('click', () => this.close(true));
      this.panel.addEventListener('keydown', (e) => {
        if (e.key === 'Escape' || e.key === 'Esc') {
          e.preventDefault();
          e.stopPropagation();
          this.close(true);
        }
      });
      this.input.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
          e.preventDefault();
          this.sendTyped();
        }
      });
      this.input.addEventListener('input', () => {
        this.autosize();
        this.typed();
      });
      this.sendBtn.addEventListener('click', () => {
        this.sendTyped();
        this.input.focus();
      });
      this.attachBtn.addEventListener('click', () => this.fileInput.click());
      this.fileInput.addEventListener('change', () => {
        this.addFiles(Array.from(this.fileInput.files || []));
        this.fileInput.value = '';
      });
      this.input.addEventListener('paste', (e) => {
        const files = Array.from((e.clipboardData && e.clipboardData.files) || []);
        if (files.length) {
          e.preventDefault();
          this.addFiles(files);
        }
      });
      document.addEventListener('visibilitychange', this.onVisibility);
      window.addEventListener('online', this.onOnline);
      window.addEventListener('pagehide', this.onPageHide);

      for (const item of this.state.items) this.renderItem(item);
      this.renderStatus();
      this.renderBadge();
      this.setConn('connecting');
    }

    applyColor(wanted) {
      const color = validColor(wanted) || '#1d4ed8';
      this.root.style.setProperty('--pw-accent', color);
      // The text on the accent: white or near-black, whichever contrasts more.
      const probe = el('span');
      probe.style.color = color;
      this.root.appendChild(probe);
      const m = /rgba?\((\d+),\s*(\d+),\s*(\d+)/.exec(getComputedStyle(probe).color || '');
      this.root.removeChild(probe);
      let on = '#ffffff';
      if (m) {
        const l = luminance([+m[1], +m[2], +m[3]]);
        on = contrast(l, 1) >= contrast(l, luminance([27, 31, 36])) ? '#ffffff' : '#1b1f24';
      }
      this.root.style.setProperty('--pw-on-accent', on);
    }

    autosize() {
      this.input.style.height = 'auto';
      this.input.style.height = Math.min(this.input.scrollHeight + 2, 120) + 'px';
    }

    setConn(state) {
      this.connState = state;
      if (!this.connEl) return;
      this.connEl.setAttribute('data-state', state);
      this.connText.textContent = this.t[state];
    }

    showError(key, kind, vars) {
      this.errorKind = kind;
      this.errorEl.textContent = fmt(this.t[key], vars);
      this.errorEl.hidden = false;
      clearTimeout(this.timers.error);
      if (kind === 'message') this.timers.error = setTimeout(() => this.clearError('message'), 8000);
    }

    clearError(kind) {
      if (!this.errorEl || (kind && this.errorKind !== kind)) return;
      this.errorKind = '';
      this.errorEl.hidden = true;
      this.errorEl.textContent = '';
    }

    renderBadge() {
      const n = this.state.unread;
      this.badge.hidden = !n || this.isOpen;
      this.badge.textContent = n > 99 ? '99+' : String(n || '');
      const label = this.isOpen ? this.t.close : n ? fmt(this.t.launcherUnread, { n: n }) : this.t.launcher;
      this.launcher.setAttribute('aria-label', label);
      this.launcher.setAttribute('aria-expanded', this.isOpen ? 'true' : 'false');
    }

    waitText(seconds) {
      if (seconds < 60) return this.t.lessMinute;
      const minutes = Math.round(seconds / 60);
      if (minutes < 90) return fmt(this.t.aboutMinutes, { n: minutes });
      return fmt(this.t.aboutHours, { n: Math.round(minutes / 60) });
    }

    atBottom() {
      const l = this.logEl;
      return l.scrollHeight - l.scrollTop - l.clientHeight < 40;
    }

    renderStatus() {
      const stick = this.atBottom();
      this.renderStatusLines();
      if (stick) this.scrollToEnd();
    }

    renderStatusLines() {
      const t = this.t;
      const st = this.state.status || { kind: 'none' };
      let line = '';
      if (st.kind === 'queued') {
        const n = st.position | 0;
        const wait = st.wait | 0;
        if (n > 0) line = wait > 0 ? fmt(t.queuePosWait, { n: n, t: this.waitText(wait) }) : fmt(t.queuePos, { n: n });
        else line = wait > 0 ? fmt(t.queueWaitingWait, { t: this.waitText(wait) }) : t.queueWaiting;
      } else if (st.kind === 'waiting') {
        line = st.name ? fmt(t.waitingFor, { name: st.name }) : t.waitingForAnyone;
      } else if (st.kind === 'closed') {
        if (st.opensAt > 0) {
          const when = new Date(st.opensAt).toLocaleString(this.lang, {
            weekday: 'short',
            day: 'numeric',
            month: 'short',
            hour: '2-digit',
            minute: '2-digit',
          });
          line = fmt(t.closedUntil, { t: when });
        } else line = t.closedNow;
      }
      this.queueEl.textContent = line;
      this.queueEl.hidden = !line;
      const name = this.state.operator;
      this.operatorEl.textContent = name || '';
      this.operatorEl.hidden = !name;
      const ended = st.kind === 'ended';
      this.endedEl.hidden = !ended;
      this.input.setAttribute('placeholder', ended ? t.placeholderEnded : t.placeholder);
    }

    itemKey(item) {
      if (!item.key) item.key = item.id ? 'm:' + item.id : item.cid ? 'c:' + item.cid : 's:' + now() + ':' + Math.random();
      return item.key;
    }

    senderLabel(item) {
      if (item.from === 'customer') return this.t.you;
      if (item.from === 'operator') return this.state.operator || this.t.operator;
      if (item.from === 'bot') return this.t.bot;
      return this.t.system;
    }

    systemText(item) {
      const t = this.t;
      if (item.sk === 'joined') return item.name ? fmt(t.joined, { name: item.name }) : t.joinedAnon;
      if (item.sk === 'ended') return t.ended;
      return '';
    }

    renderItem(item) {
      const key = this.itemKey(item);
      const wasAtBottom = this.atBottom();
      const node = el('div', { class: 'msg', 'data-testid': 'widget-message', 'data-sender': item.from });
      if (item.id) node.setAttribute('data-message-id', item.id);
      const who = el('span', { class: 'vh' });
      who.textContent = this.senderLabel(item) + ': ';
      const text = el('div', { class: 'text', 'data-testid': 'widget-message-text' });
      if (item.k === 's') text.textContent = this.systemText(item);
      else appendLinkified(text, item.text || '');
      const bubble = el('div', { class: 'bubble' }, [who, text]);
      if (item.att) bubble.appendChild(this.renderFiles(item.att));
      node.appendChild(bubble);
      if (item.k !== 's') {
        const meta = el('div', { class: 'meta' });
        if (item.at) {
          const time = el('time', { datetime: new Date(item.at).toISOString() });
          time.textContent = new Date(item.at).toLocaleTimeString(this.lang, { hour: '2-digit', minute: '2-digit' });
          meta.appendChild(time);
        }
        if (item.from === 'customer') {
          const mark = el('span', { class: 'mark', 'data-testid': 'widget-message-status', role: 'img' });
          const failed = el('span', { class: 'failed', hidden: true });
          meta.appendChild(mark);
          meta.appendChild(failed);
          node._mark = mark;
          node._failed = failed;
        }
        node.appendChild(meta);
      }
      const old = this.nodes.get(key);
      if (old && old.parentNode) old.parentNode.replaceChild(node, old);
      else this.logEl.appendChild(node);
      this.nodes.set(key, node);
      this.renderMark(item);
      if (wasAtBottom || item.from === 'customer') this.scrollToEnd();
    }

    renderFiles(files) {
      const box = el('div', { class: 'files' });
      for (const f of files) {
        const name = f.name || this.t.file;
        if (f.url && f.mime.indexOf('image/') === 0) {
          const img = el('img', { src: f.url, alt: name, loading: 'lazy', referrerpolicy: 'no-referrer' });
          box.appendChild(el('a', { href: f.url, target: '_blank', rel: 'noopener noreferrer' }, [img]));
        } else if (f.url) {
          const a = el('a', { href: f.url, target: '_blank', rel: 'noopener noreferrer', download: name });
          a.textContent = '📎 ' + name;
          box.appendChild(a);
        } else {
          const span = el('span');
          span.textContent = '📎 ' + name;
          box.appendChild(span);
        }
      }
      return box;
    }

    renderMark(item) {
      const node = this.nodes.get(item.key);
      if (!node || !node._mark) return;
      const st = item.st || 'sending';
      const labels = { sending: 'stSending', sent: 'stSent', delivered: 'stDelivered', read: 'stRead', failed: 'stFailed' };
      const symbols = { sending: '…', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };
      node._mark.setAttribute('data-state', st);
      node._mark.setAttribute('aria-label', this.t[labels[st] || 'stSent']);
      node._mark.setAttribute('title', this.t[labels[st] || 'stSent']);
      node._mark.textContent = symbols[st] || '✓';
      node._failed.hidden = st !== 'failed';
      node._failed.textContent = st === 'failed' ? this.t.stFailed : '';
    }

    scrollToEnd() {
      this.logEl.scrollTop = this.logEl.scrollHeight;
    }

    showTyping(name) {
      const n = name || this.state.operator;
      const stick = this.atBottom();
      this.typingEl.textContent = n ? fmt(this.t.typing, { name: n }) : this.t.typingAnon;
      this.typingEl.hidden = false;
      if (stick) this.scrollToEnd();
      clearTimeout(this.timers.typing);
      this.timers.typing = setTimeout(() => this.hideTyping(), TYPING_SHOWN_MS);
    }

    hideTyping() {
      clearTimeout(this.timers.typing);
      if (this.typingEl) {
        this.typingEl.hidden = true;
        this.typingEl.textContent = '';
      }
    }

    // -- Opening and closing --

    open() {
      if (this.dead) return;
      this.isOpen = true;
      this.state.open = true;
      this.state.openChosen = true;
      this.panel.hidden = false;
      this.root.classList.add('open');
      this.state.unread = 0;
      this.renderBadge();
      this.persist();
      if (this.halted) this.resume();
      else this.start();
      this.scrollToEnd();
      setTimeout(() => {
        if (this.isOpen) this.input.focus();
      }, 0);
      this.sendPendingReads();
    }

    close(returnFocus) {
      if (this.dead || !this.isOpen) return;
      this.isOpen = false;
      this.state.open = false;
      this.state.openChosen = true;
      this.panel.hidden = true;
      this.root.classList.remove('open');
      this.renderBadge();
      this.persist();
      if (returnFocus) this.launcher.focus();
    }

    visibilityChanged() {
      if (document.visibilityState !== 'visible') {
        this.persist();
        return;
      }
      if (this.isOpen && this.state.unread) {
        this.state.unread = 0;
        this.renderBadge();
      }
      this.sendPendingReads();
    }

    networkBack() {
      if (this.dead || this.halted || !this.started) return;
      if (this.timers.reconnect) {
        this.attempt = 0;
        this.connect();
      }
    }

    seesLog() {
      return this.isOpen && document.visibilityState === 'visible';
    }

    // -- Connection --

    start() {
      if (this.started || this.dead) return;
      this.started = true;
      this.connect();
    }

    resume() {
      this.halted = false;
      this.attempt = 0;
      if (!this.started) this.start();
      else this.connect();
    }

    connect() {
      if (this.dead || this.halted) return;
      clearTimeout(this.timers.reconnect);
      this.timers.reconnect = null;
      const gen = ++this.gen;
      this.setConn(this.everConnected ? 'reconnecting' : 'connecting');
      this.ensureSession().then(
        (token) => {
          if (gen !== this.gen || this.dead) return;
          if (this.mode === 'ws') this.openSocket(token, false);
          else this.poll(token, gen);
        },
        (err) => {
          if (gen !== this.gen || this.dead) return;
          this.sessionFailed(err);
        },
      );
    }

    backoff() {
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, this.attempt));
      this.attempt = Math.min(this.attempt + 1, 12);
      return Math.min(BACKOFF_MAX_MS, base * (0.75 + Math.random() * 0.5));
    }

    scheduleReconnect(delay) {
      if (this.dead || this.halted) return;
      this.gen++; // whatever runs now is stale
      clearTimeout(this.timers.reconnect);
      const wait = delay || this.backoff();
      this.setConn(this.everConnected ? 'reconnecting' : 'connecting');
      this.timers.reconnect = setTimeout(() => {
        this.timers.reconnect = null;
        this.connect();
      }, wait);
    }

    markConnected() {
      this.everConnected = true;
      this.setConn('connected');
      this.clearError('connection');
    }

    halt(errorKey) {
      this.halted = true;
      this.gen++;
      this.showError(errorKey, 'connection');
    }

    /** The token of a live session: the stored one while it is good, else a new session. */
    ensureSession() {
      const s = this.state;
      if (s.token && s.expiresAt - now() > TOKEN_MARGIN_MS) return Promise.resolve(s.token);
      if (!this.sessionPromise) {
        this.sessionPromise = this.openSession(true).then(
          (token) => {
            this.sessionPromise = null;
            return token;
          },
          (err) => {
            this.sessionPromise = null;
            throw err;
          },
        );
      }
      return this.sessionPromise;
    }

    openSession(mayForgetVisitor) {
      const id = this.cfg.identity;
      const body = {};
      if (id && id.userId) {
        body.identity = { user_id: String(id.userId), signature: String(id.signature || '') };
        if (id.phone) body.identity.phone = String(id.phone);
      } else {
        const vid = this.visitorId();
        if (vid) body.visitor_id = vid;
      }
      if (this.cfg.name) {
        // A name goes with the session, for a vouched user or an anonymous visitor alike.
        const name = String(this.cfg.name).replace(/[\u0000-\u001f\u007f-\u009f]/g, ' ').trim();
        if (name) body.name = Array.from(name).slice(0, 200).join('');
      }
      return this.http('POST', 'sessions', body, null).then((res) => {
        const d = res.data;
        if (res.ok && d && typeof d.token === 'string' && d.token) {
          const s = this.state;
          s.token = d.token;
          s.expiresAt = Number(d.expires_at_ms) || now() + 23 * 3600 * 1000;
          if (typeof d.customer_id === 'string') s.customerId = d.customer_id;
          // A new visitor's updates start where the stream was when the session opened:
          // one from before the first poll or socket (the answer to a first message) is kept.
          if (!s.lastSeq && Number(d.after) > 0) s.lastSeq = Number(d.after);
          if (!body.identity && typeof d.visitor_id === 'string' && d.visitor_id) {
            writeString(this.local, this.visitorKey, d.visitor_id);
          }
          this.persist();
          return d.token;
        }
        if (mayForgetVisitor && body.visitor_id && res.code === 'invalid_argument') {
          // The kept id is not one the server accepts: start as a new visitor.
          writeString(this.local, this.visitorKey, null);
          return this.openSession(false);
        }
        throw new ChatError(res.code || codeForStatus(res.status), res.status);
      });
    }

    sessionFailed(err) {
      const code = (err && err.code) || 'network';
      if (code === 'network') {
        // Offline, or the server cannot be reached from this page (a proxy, CORS): say so after a few tries.
        if (!navigator.onLine || this.state.outbox.length) this.showError('errOffline', 'connection');
        else if (this.attempt >= 3) this.showError('errGeneric', 'connection');
        this.scheduleReconnect();
      } else if (code === 'not_found') {
        this.showError('errNotFound', 'connection');
        this.scheduleReconnect(NOT_FOUND_RETRY_MS);
      } else if (code === 'permission_denied') {
        this.halt('errForbidden');
      } else if (code === 'unauthenticated' || code === 'invalid_argument' || code === 'too_large') {
        this.halt(this.cfg.identity ? 'errIdentity' : 'errSetup');
      } else {
        this.showError('errGeneric', 'connection');
        this.scheduleReconnect();
      }
    }

    /** One HTTP exchange; resolves with {ok, status, data, code}, rejects with ChatError('network'). */
    http(method, path, body, token, signal) {
      const headers = {};
      if (body) headers['Content-Type'] = 'application/json';
      if (token) headers.Authorization = 'Bearer ' + token;
      const init = { method: method, headers: headers, credentials: 'omit', cache: 'no-store', mode: 'cors' };
      if (body) init.body = JSON.stringify(body);
      if (signal) init.signal = signal;
      return fetch(this.api + path, init).then(
        (r) =>
          r.text().then(
            (text) => {
              let data = null;
              try {
                data = text ? JSON.parse(text) : null;
              } catch (e) {
                data = null;
              }
              const err = data && data.error;
              const code = r.ok ? '' : err && typeof err.code === 'string' ? err.code : codeForStatus(r.status);
              return { ok: r.ok, status: r.status, data: data, code: code };
            },
            () => {
              throw new ChatError('network');
            },
          ),
        () => {
          throw new ChatError('network');
        },
      );
    }

    // -- WebSocket --

    openSocket(token, probe) {
      let ws;
      try {
        // The token goes in the first frame, not the URL (which servers and proxies log).
        ws = new WebSocket(`${this.wsApi}ws?after=${this.state.lastSeq}`);
      } catch (e) {
        if (probe) this.scheduleProbe();
        else this.socketFailed(null);
        return;
      }
      const conn = { ws: ws, welcomed: false, openedAt: 0, probe: probe, gone: false };
      if (probe) this.probe = conn;
      else this.sock = conn;
      ws.addEventListener('open', () => {
        try {
          ws.send(JSON.stringify({ type: 'auth', token: token }));
        } catch (e) {
          /* closing already */
        }
      });
      ws.addEventListener('message', (ev) => this.socketMessage(conn, ev));
      ws.addEventListener('close', () => this.socketGone(conn));
      ws.addEventListener('error', () => this.socketGone(conn));
    }

    socketMessage(conn, ev) {
      if (conn.gone || this.dead) return;
      let f;
      try {
        f = JSON.parse(typeof ev.data === 'string' ? ev.data : '');
      } catch (e) {
        return;
      }
      if (!f || typeof f !== 'object') return;
      this.lastFrameAt = now();
      if (f.type === 'welcome') {
        if (conn.probe) {
          // The WebSocket works again: leave long polling.
          if (this.probe !== conn || this.mode !== 'poll') {
            conn.gone = true;
            conn.ws.close();
            return;
          }
          this.probe = null;
          this.stopPolling();
          this.mode = 'ws';
          conn.probe = false;
          this.sock = conn;
        }
        if (this.sock !== conn) return;
        conn.welcomed = true;
        conn.openedAt = now();
        this.welcomed(conn, f);
        return;
      }
      if (f.type === 'error' && !conn.welcomed && f.code === 'unauthenticated') {
        // The token was refused (expired): the next attempt opens a new session.
        this.state.token = null;
        return;
      }
      if (this.sock !== conn || !conn.welcomed) return;
      switch (f.type) {
        case 'update':
          this.applyUpdates([f]);
          break;
        case 'accepted':
          if (typeof f.client_id === 'string') this.accepted(f.client_id, f.message_id);
          break;
        case 'read_noted':
          this.readNoted(f.message_id);
          break;
        case 'pong':
          break;
        case 'error':
          this.frameError(conn, f);
          break;
        default:
          break; // a frame this widget does not know yet
      }
    }

    welcomed(conn, f) {
      this.wsFailures = 0;
      const after = Number(f.after);
      // With after=0 the server starts at the stream's end: that point is where a reconnect resumes.
      if (after > this.state.lastSeq) this.state.lastSeq = after;
      this.persist();
      this.markConnected();
      this.sentAt.clear();
      this.readInFlight.clear();
      this.lastPingAt = 0;
      this.lastFrameAt = now();
      clearInterval(this.timers.ping);
      this.timers.ping = setInterval(() => this.tick(conn), 5000);
      this.flushOutbox();
      this.sendPendingReads();
    }

    /** Pings a quiet socket, drops a dead one, resends what the server has not confirmed. */
    tick(conn) {
      if (conn.gone || this.sock !== conn) {
        clearInterval(this.timers.ping);
        return;
      }
      const t = now();
      if (this.lastPingAt > this.lastFrameAt && t - this.lastPingAt >= PING_EVERY_MS && t - this.lastFrameAt >= 2 * PING_EVERY_MS) {
        conn.ws.close(); // no frame, not even the pong, for twice the ping interval
        this.socketGone(conn);
        return;
      }
      if (t - this.lastFrameAt >= PING_EVERY_MS && t - this.lastPingAt >= PING_EVERY_MS) {
        this.lastPingAt = t;
        this.sendFrame({ type: 'ping' });
      }
      this.flushOutbox();
    }

    sendFrame(frame) {
      const c = this.sock;
      if (!c || c.gone || !c.welcomed || c.ws.readyState !== 1) return false;
      try {
        c.ws.send(JSON.stringify(frame));
        return true;
      } catch (e) {
        return false;
      }
    }

    socketGone(conn) {
      if (conn.gone) return;
      conn.gone = true;
      try {
        conn.ws.close();
      } catch (e) {
        /* already closed */
      }
      if (conn.probe) {
        if (this.probe === conn) this.probe = null;
        this.scheduleProbe();
        return;
      }
      if (this.sock !== conn || this.dead) return;
      this.sock = null;
      clearInterval(this.timers.ping);
      this.hideTyping();
      this.socketFailed(conn);
    }

    socketFailed(conn) {
      if (!conn || !conn.welcomed) {
        this.wsFailures++;
        // Perhaps the token expired or is refused (a refused upgrade looks like any failure): a new session.
        if (this.wsFailures >= 2) this.state.token = null;
      } else if (now() - conn.openedAt > 10000) {
        this.attempt = 0; // it had worked for a while: start the backoff again
      }
      if (this.wsFailures >= WS_FAILURES_BEFORE_POLL) {
        this.mode = 'poll';
        this.wsFailures = 0;
        this.scheduleProbe();
        if (this.state.outbox.length && !navigator.onLine) this.showError('errOffline', 'connection');
        this.scheduleReconnect(BACKOFF_MIN_MS);
        return;
      }
      if (this.state.outbox.length && (!navigator.onLine || this.attempt >= 3)) this.showError('errOffline', 'connection');
      this.scheduleReconnect();
    }

    /** While long polling, the WebSocket is tried again now and then. */
    scheduleProbe() {
      clearTimeout(this.timers.probe);
      if (this.dead || typeof window.WebSocket !== 'function') return;
      this.timers.probe = setTimeout(() => {
        if (this.dead || this.mode !== 'poll' || this.probe || !this.state.token) {
          if (!this.dead && this.mode === 'poll') this.scheduleProbe();
          return;
        }
        this.openSocket(this.state.token, true);
      }, WS_RETRY_FROM_POLL_MS);
    }

    frameError(conn, f) {
      const code = typeof f.code === 'string' ? f.code : '';
      if (typeof f.client_id === 'string' && f.client_id) {
        this.messageRefused(f.client_id, code);
      } else if (code === 'unavailable') {
        // The server lost the feed ("reconnect with the last seq").
        conn.ws.close();
        this.socketGone(conn);
      }
      // Other errors answer a read or an unknown frame: nothing for the visitor to do.
    }

    // -- Long polling --

    poll(token, gen) {
      if (gen !== this.gen || this.mode !== 'poll' || this.dead) return;
      this.flushOutbox();
      const ctrl = typeof AbortController === 'function' ? new AbortController() : null;
      this.pollAbort = ctrl;
      const timeout = setTimeout(() => ctrl && ctrl.abort(), POLL_TIMEOUT_MS);
      // The server holds a poll open until it has something: one not refused at once is a connection.
      const settled = setTimeout(() => {
        if (gen === this.gen && this.mode === 'poll') this.markConnected();
      }, 2000);
      const after = this.state.lastSeq;
      this.http('GET', `updates?after=${after}`, null, token, ctrl && ctrl.signal).then(
        (res) => {
          clearTimeout(timeout);
          clearTimeout(settled);
          if (gen !== this.gen || this.mode !== 'poll' || this.dead) return;
          if (res.ok && res.data) {
            this.markConnected();
            this.attempt = 0;
            this.applyUpdates(Array.isArray(res.data.updates) ? res.data.updates : []);
            const last = Number(res.data.last_seq);
            if (last > this.state.lastSeq) {
              this.state.lastSeq = last;
              this.persist();
            }
            this.ensureSession().then(
              (t) => this.poll(t, gen),
              (err) => {
                if (gen === this.gen && !this.dead) this.sessionFailed(err);
              },
            );
          } else if (res.code === 'unauthenticated') {
            this.state.token = null;
            this.scheduleReconnect(BACKOFF_MIN_MS);
          } else {
            this.sessionFailed(new ChatError(res.code, res.status));
          }
        },
        () => {
          clearTimeout(timeout);
          clearTimeout(settled);
          if (gen !== this.gen || this.dead) return;
          if (this.state.outbox.length && (!navigator.onLine || this.attempt >= 3)) this.showError('errOffline', 'connection');
          this.scheduleReconnect();
        },
      );
    }

    stopPolling() {
      this.gen++;
      if (this.pollAbort) {
        try {
          this.pollAbort.abort();
        } catch (e) {
          /* done already */
        }
        this.pollAbort = null;
      }
    }

    // -- Sending --

    sendTyped() {
      const text = this.input.value.replace(/\u0000/g, '');
      const files = this.files.filter((f) => f.state === 'ready');
      if (!text.trim() && !files.length) return;
      if (this.files.some((f) => f.state === 'uploading')) {
        this.showError('errFilesWait', 'message');
        return;
      }
      if (codePoints(text) > MAX_TEXT_CHARS) {
        this.showError('errTooLong', 'message', { n: MAX_TEXT_CHARS });
        return;
      }
      this.clearError('message');
      const cid = newClientId();
      const item = { k: 'm', cid: cid, from: 'customer', text: text, at: now(), st: 'sending' };
      if (files.length) item.att = files.map((f) => ({ name: f.name, mime: f.mime, url: f.preview, own: true }));
      this.itemKey(item);
      this.state.items.push(item);
      this.state.outbox.push({ client_id: cid, text: text, attachment_ids: files.map((f) => f.id) });
      this.files = [];
      this.renderChips();
      this.input.value = '';
      this.autosize();
      this.persist();
      this.renderItem(item);
      this.markActive(true);
      if (this.halted) this.resume();
      else if (!this.started) this.start();
      else this.flushOutbox();
    }

    /** Sends what the server has not confirmed, with the same client_id as before. */
    flushOutbox() {
      if (this.dead || !this.state.outbox.length) return;
      if (this.mode === 'poll') {
        this.postNext();
        return;
      }
      const c = this.sock;
      if (!c || !c.welcomed) return;
      const t = now();
      for (const o of this.state.outbox) {
        const at = this.sentAt.get(o.client_id);
        if (at && t - at < RESEND_AFTER_MS) continue;
        const frame = { type: 'message', client_id: o.client_id, text: o.text, attachment_ids: o.attachment_ids || [] };
        if (!this.sendFrame(frame)) return;
        this.sentAt.set(o.client_id, t);
      }
    }

    /** Long polling's sending: one POST at a time, in order. */
    postNext() {
      if (this.posting || this.dead || this.mode !== 'poll' || this.halted) return;
      const o = this.state.outbox[0];
      if (!o) return;
      this.posting = true;
      const retry = (delay) => {
        clearTimeout(this.timers.post);
        this.timers.post = setTimeout(() => this.postNext(), delay);
      };
      this.ensureSession()
        .then((token) =>
          this.http('POST', 'messages', { client_id: o.client_id, text: o.text, attachment_ids: o.attachment_ids || [] }, token),
        )
        .then(
          (res) => {
            this.posting = false;
            if (this.dead) return;
            if (res.ok) {
              this.accepted(o.client_id, res.data && res.data.message_id);
              this.postNext();
            } else if (res.code === 'unauthenticated') {
              this.state.token = null;
              retry(BACKOFF_MIN_MS);
            } else if (res.code === 'invalid_argument' || res.code === 'too_large') {
              this.messageRefused(o.client_id, res.code);
              this.postNext();
            } else if (res.code === 'permission_denied') {
              this.halt('errForbidden');
            } else {
              if (res.code === 'unavailable') this.showError('errBusy', 'message');
              retry(2000 + Math.random() * 3000);
            }
          },
          (err) => {
            this.posting = false;
            if (this.dead) return;
            if (err && err.code && err.code !== 'network') this.sessionFailed(err);
            else retry(2000 + Math.random() * 3000);
          },
        );
    }

    accepted(clientId, messageId) {
      const s = this.state;
      s.outbox = s.outbox.filter((o) => o.client_id !== clientId);
      this.sentAt.delete(clientId);
      const item = s.items.find((i) => i.cid === clientId);
      if (item) {
        if (typeof messageId === 'string' && messageId) item.id = messageId;
        if ((STATE_RANK[item.st] || 0) < STATE_RANK.sent && item.st !== 'failed') item.st = 'sent';
        this.renderMark(item);
      }
      if (!s.outbox.length) this.clearError('connection');
      this.persist();
    }

    messageRefused(clientId, code) {
      if (code === 'invalid_argument' || code === 'too_large') {
        const s = this.state;
        s.outbox = s.outbox.filter((o) => o.client_id !== clientId);
        this.sentAt.delete(clientId);
        const item = s.items.find((i) => i.cid === clientId);
        if (item) {
          item.st = 'failed';
          this.renderMark(item);
        }
        this.persist();
        if (code === 'too_large') this.showError('errTooLong', 'message', { n: MAX_TEXT_CHARS });
        else this.showError('errMessage', 'message');
        return;
      }
      // Not stored this time ("send it again with the same client_id"): it stays in the outbox.
      this.sentAt.set(clientId, now() - RESEND_AFTER_MS + 3000);
      if (code === 'unavailable') this.showError('errBusy', 'message');
    }

    // -- Files --

    /** Files the visitor chose: each uploaded at once, shown as a chip until sent or removed. */
    addFiles(list) {
      for (const file of list) {
        if (this.files.length >= MAX_FILES) {
          this.showError('errTooManyFiles', 'message', { n: MAX_FILES });
          break;
        }
        const mime = String(file.type || 'application/octet-stream').toLowerCase();
        const f = { key: newClientId(), name: String(file.name || '').slice(0, 255), mime: mime, state: 'uploading', id: '', preview: undefined };
        if (mime.indexOf('image/') === 0 && mime !== 'image/svg+xml' && window.URL && URL.createObjectURL) f.preview = URL.createObjectURL(file);
        this.files.push(f);
        this.upload(f, file);
      }
      this.renderChips();
      if (!this.started) this.start();
    }

    upload(f, file) {
      const abort = typeof AbortController === 'function' ? new AbortController() : null;
      f.abort = abort;
      this.ensureSession()
        .then((token) =>
          fetch(this.api + 'files?name=' + encodeURIComponent(f.name), {
            method: 'POST',
            headers: { 'Content-Type': f.mime, Authorization: 'Bearer ' + token },
            body: file,
            credentials: 'omit',
            cache: 'no-store',
            mode: 'cors',
            signal: abort ? abort.signal : undefined,
          }),
        )
        .then((r) => r.json().catch(() => null).then((data) => ({ ok: r.ok, status: r.status, data: data })))
        .then(
          (res) => {
            if (this.files.indexOf(f) < 0) return;
            if (res.ok && res.data && typeof res.data.id === 'string') {
              f.id = res.data.id;
              f.state = 'ready';
            } else {
              f.state = 'failed';
              const code = (res.data && res.data.error && res.data.error.code) || codeForStatus(res.status);
              if (code === 'unsupported_type') this.showError('errFileType', 'message');
              else if (code === 'too_large') this.showError('errFileTooBig', 'message');
              else this.showError('errFileUpload', 'message');
            }
            this.renderChips();
          },
          () => {
            if (this.files.indexOf(f) < 0) return;
            f.state = 'failed';
            this.showError('errFileUpload', 'message');
            this.renderChips();
          },
        );
    }

    removeFile(f) {
      this.files = this.files.filter((x) => x !== f);
      if (f.abort) f.abort.abort();
      if (f.preview) URL.revokeObjectURL(f.preview);
      this.renderChips();
      this.input.focus();
    }

    renderChips() {
      const t = this.t;
      this.chipsEl.replaceChildren();
      for (const f of this.files) {
        const name = el('span', { class: 'chip-name' });
        name.textContent = f.name || t.file;
        const state = el('span', { class: 'chip-state' });
        state.textContent = f.state === 'uploading' ? t.uploading : f.state === 'failed' ? t.uploadFailed : '';
        const remove = el('button', { type: 'button', 'aria-label': fmt(t.removeFile, { name: f.name || t.file }) });
        remove.textContent = '×';
        remove.addEventListener('click', () => this.removeFile(f));
        this.chipsEl.appendChild(el('span', { class: 'chip', 'data-testid': 'widget-attachment', 'data-state': f.state }, [name, state, remove]));
      }
      this.chipsEl.hidden = !this.files.length;
    }

    typed() {
      const s = this.state;
      if (!this.input.value.trim() || !s.conv || (s.convs[s.conv] && s.convs[s.conv].ended)) return;
      const t = now();
      if (t - this.lastTypingAt < TYPING_EVERY_MS) return;
      if (this.sendFrame({ type: 'typing', conversation_id: s.conv })) this.lastTypingAt = t;
    }

    // -- Read receipts --

    sendPendingReads() {
      if (!this.seesLog()) return;
      for (const item of this.state.items) this.maybeRead(item);
    }

    maybeRead(item) {
      if (!this.seesLog() || item.k !== 'm' || item.rd || !item.id || !item.conv) return;
      if (item.from !== 'operator' && item.from !== 'bot') return;
      if (this.readInFlight.has(item.id)) return;
      if (this.sendFrame({ type: 'read', conversation_id: item.conv, message_id: item.id })) this.readInFlight.add(item.id);
    }

    readNoted(messageId) {
      if (typeof messageId !== 'string') return;
      this.readInFlight.delete(messageId);
      const item = this.state.items.find((i) => i.id === messageId && i.from !== 'customer');
      if (item && !item.rd) {
        item.rd = true;
        this.persist();
      }
    }

    // -- Updates --

    applyUpdates(frames) {
      let changed = false;
      for (const f of frames) if (f && typeof f === 'object' && this.applyUpdate(f)) changed = true;
      if (changed) {
        this.persist();
        this.renderStatus();
        this.renderBadge();
      }
    }

    /** One `update` frame; false when it was applied before (its seq is not past the last applied). */
    applyUpdate(f) {
      const s = this.state;
      const seq = Number(f.seq);
      if (!(seq > s.lastSeq)) return false;
      s.lastSeq = seq;
      const u = f.update && typeof f.update === 'object' ? f.update : {};
      const conv = typeof f.conversation_id === 'string' ? f.conversation_id : '';
      const version = Number(f.version) || 0;
      const kind = u.kind;

      if (kind === 'message') {
        this.applyMessage(u, conv);
        return true;
      }
      if (kind === 'delivery') {
        const at = s.items.findIndex((i) => i.id === u.message_id && i.from === 'customer');
        const item = s.items[at];
        const st = String(u.state || '');
        if (item && item.st !== 'failed') {
          if (st === 'failed') item.st = 'failed';
          else if ((STATE_RANK[st] || 0) > (STATE_RANK[item.st] || 0)) item.st = st === 'accepted' ? 'sent' : st;
          this.renderMark(item);
        }
        // Read by the operator up to this message: the visitor's earlier ones too.
        if (item && st === 'read') {
          for (const earlier of s.items.slice(0, at)) {
            if (earlier.from === 'customer' && earlier.id && earlier.st !== 'failed' && earlier.st !== 'read') {
              earlier.st = 'read';
              this.renderMark(earlier);
            }
          }
        }
        return true;
      }

      // Status updates: one older than a status already applied for its conversation is stale.
      if (!conv) return true;
      const c = s.convs[conv] || (s.convs[conv] = { v: 0 });
      if (version < c.v) return true;
      if (kind === 'typing') {
        if (!s.conv) s.conv = conv;
        if (!c.ended && conv === s.conv) this.showTyping(typeof u.name === 'string' ? u.name : '');
        return true;
      }
      if (kind !== 'queued' && kind !== 'operator_joined' && kind !== 'ended' && kind !== 'queue_closed' && kind !== 'waiting_for_operator') {
        return true; // a kind this widget does not know yet
      }
      c.v = version;
      if (c.ended) return true; // nothing follows an end
      if (kind === 'ended' && s.conv && conv !== s.conv && s.convs[s.conv] && !s.convs[s.conv].ended) {
        c.ended = true; // an older conversation ended while a newer one goes on
        return true;
      }
      s.conv = conv;
      if (kind === 'queued') {
        s.status = { kind: 'queued', position: Number(u.position) || 0, wait: Number(u.estimated_wait_seconds) || 0 };
        s.operator = '';
        this.markActive(true);
      } else if (kind === 'operator_joined') {
        const name = typeof u.operator_name === 'string' ? u.operator_name.trim() : '';
        s.status = { kind: 'assigned' };
        s.operator = name;
        this.addSystem({ sk: 'joined', name: name, conv: conv });
        this.markActive(true);
      } else if (kind === 'waiting_for_operator') {
        s.status = { kind: 'waiting', name: typeof u.operator_name === 'string' ? u.operator_name : '', until: Number(u.until_ms) || 0 };
        s.operator = '';
      } else if (kind === 'queue_closed') {
        s.status = { kind: 'closed', opensAt: Number(u.opens_at_ms) || 0 };
      } else if (kind === 'ended') {
        c.ended = true;
        s.status = { kind: 'ended' };
        s.operator = '';
        this.hideTyping();
        this.addSystem({ sk: 'ended', conv: conv });
        this.markActive(false);
      }
      return true;
    }

    applyMessage(u, conv) {
      const s = this.state;
      const id = typeof u.message_id === 'string' ? u.message_id : '';
      if (id && s.items.some((i) => i.id === id)) return; // shown already
      const from = u.from === 'operator' || u.from === 'bot' || u.from === 'customer' || u.from === 'system' ? u.from : 'system';
      const item = {
        k: 'm',
        id: id || undefined,
        from: from,
        text: typeof u.text === 'string' ? u.text : '',
        at: Number(u.at_ms) || now(),
        conv: conv || undefined,
        att: cleanAttachments(u.attachments, this.cfg.base),
      };
      if (conv && !(s.convs[conv] && s.convs[conv].ended)) s.conv = conv;
      s.items.push(item);
      this.renderItem(item);
      if (from === 'operator' || from === 'bot') {
        this.hideTyping();
        if (!this.seesLog()) s.unread = (s.unread || 0) + 1;
        this.maybeRead(item);
        this.markActive(true);
      }
    }

    addSystem(fields) {
      const item = Object.assign({ k: 's', from: 'system', at: now() }, fields);
      item.key = 's:' + this.state.lastSeq;
      this.state.items.push(item);
      this.renderItem(item);
    }

    // -- Teardown --

    destroy() {
      if (this.dead) return;
      this.persist();
      this.dead = true;
      this.gen++;
      for (const k of Object.keys(this.timers)) {
        clearTimeout(this.timers[k]);
        clearInterval(this.timers[k]);
      }
      for (const c of [this.sock, this.probe]) {
        if (c && !c.gone) {
          c.gone = true;
          try {
            c.ws.close();
          } catch (e) {
            /* closed */
          }
        }
      }
      this.sock = this.probe = null;
      if (this.pollAbort) this.pollAbort.abort();
      document.removeEventListener('visibilitychange', this.onVisibility);
      window.removeEventListener('online', this.onOnline);
      window.removeEventListener('pagehide', this.onPageHide);
      if (this.host && this.host.parentNode) this.host.parentNode.removeChild(this.host);
    }
  }

  // ---- Configuration and the public API -------------------------------------------------------------------

  function attrConfig(script) {
    if (!script) return { theme: {} };
    const d = script.dataset || {};
    return {
      tenant: d.tenant,
      channel: d.channel,
      lang: d.lang,
      open: d.open !== undefined && d.open !== 'false',
      theme: { color: d.color, title: d.title, position: d.position },
    };
  }

  function baseUrl(url) {
    if (typeof url !== 'string' || !url) return null;
    try {
      const u = new URL(url, window.location.href);
      if (u.protocol !== 'https:' && u.protocol !== 'http:') return null;
      let path = u.pathname;
      if (/\.js$/i.test(path)) path = path.replace(/[^/]*$/, '');
      if (!path.endsWith('/')) path += '/';
      return u.origin + path;
    } catch (e) {
      return null;
    }
  }

  function resolveConfig(opts) {
    const attrs = attrConfig(SCRIPT);
    const o = opts && typeof opts === 'object' ? opts : {};
    const theme = Object.assign({}, attrs.theme);
    if (o.theme && typeof o.theme === 'object') {
      for (const k of ['color', 'title', 'position']) if (o.theme[k] != null) theme[k] = o.theme[k];
    }
    const tenant = String(o.tenant || attrs.tenant || '').trim();
    const channel = String(o.channel || attrs.channel || '').trim();
    const base = baseUrl(o.url) || baseUrl(SCRIPT && SCRIPT.src);
    if (!tenant || !channel || !base) {
      if (window.console) console.warn('Parley widget: tenant, channel and the server URL are required');
      return null;
    }
    let identity = null;
    const id = o.identity;
    if (id && typeof id === 'object' && (id.userId || id.name)) {
      identity = {
        userId: id.userId ? String(id.userId) : '',
        signature: id.signature ? String(id.signature) : '',
        phone: id.phone ? String(id.phone) : '',
        name: id.name ? String(id.name) : '',
      };
    }
    const title = typeof theme.title === 'string' ? theme.title.trim().slice(0, 80) : '';
    return {
      base: base,
      tenant: tenant,
      channel: channel,
      lang: pickLang(o.lang || attrs.lang),
      identity: identity && identity.userId ? identity : null,
      name: identity ? identity.name : '',
      theme: {
        color: theme.color,
        title: title,
        position: String(theme.position || '').toLowerCase() === 'left' ? 'left' : 'right',
      },
      open: o.open !== undefined ? !!o.open : attrs.open,
    };
  }

  let instance = null;
  let wantOpen = null; // open()/close() before the page had a body

  function whenBody(fn) {
    if (document.body) fn();
    else document.addEventListener('DOMContentLoaded', fn, { once: true });
  }

  function create(opts) {
    if (typeof fetch !== 'function' || !document.documentElement.attachShadow) {
      if (window.console) console.warn('Parley widget: this browser is too old for the chat');
      return;
    }
    const cfg = resolveConfig(opts);
    if (!cfg) return;
    const w = new Widget(cfg);
    instance = w;
    whenBody(() => {
      if (instance !== w || w.dead) return;
      w.mount();
      const s = w.state;
      const resumable = s.token || s.items.length || s.outbox.length || w.wasActive();
      // The visitor's own open or close in this tab wins over data-open.
      const open = wantOpen !== null ? wantOpen : s.openChosen ? s.open : cfg.open;
      wantOpen = null;
      if (open) w.open();
      else if (resumable) w.start();
    });
  }

  const api = {
    __parley: true,
    version: VERSION,
    init(opts) {
      if (instance) instance.destroy();
      instance = null;
      create(opts);
      return api;
    },
    open() {
      if (instance && instance.host) instance.open();
      else wantOpen = true;
    },
    close() {
      if (instance && instance.host) instance.close(false);
      else wantOpen = false;
    },
    destroy() {
      if (instance) instance.destroy();
      instance = null;
    },
  };
  window.ParleyWidget = api;

  // Calls queued before the script loaded, else the script tag's own configuration.
  const queued = previous && Array.isArray(previous.q) ? previous.q : [];
  const hasInit = queued.some((c) => c && c[0] === 'init');
  if (!hasInit && SCRIPT && SCRIPT.getAttribute('data-tenant') && SCRIPT.getAttribute('data-channel')) api.init();
  for (const call of queued) {
    if (call && typeof api[call[0]] === 'function' && call[0] !== 'version') api[call[0]].apply(api, call.slice(1));
  }
})();
