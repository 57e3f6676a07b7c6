// Building nodes without HTML strings: the page never assigns markup, so no
// text from the API or the person can become a script (the Content-Security-
// Policy enforces it with Trusted Types).

const PROPERTIES = new Set(['value', 'checked', 'disabled', 'selected', 'hidden', 'open']);

// h('button', {class: 'primary', onclick: f}, 'Save') → <button class="primary">Save</button>
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (PROPERTIES.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function text(el, value) {
  if (el.textContent !== value) el.textContent = value;
}

let counter = 0;
export const uid = (prefix) => `${prefix}-${++counter}`;

// A polite live region's text; the same text twice is still announced.
export function announce(region, message) {
  region.textContent = '';
  // A separate task, so that screen readers see a change even for equal text.
  setTimeout(() => {
    region.textContent = message;
  }, 30);
}

// Waits `ms`, or rejects when `signal` aborts.
export function delay(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason ?? new DOMException('aborted', 'AbortError'));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', stop);
      resolve();
    }, ms);
    const stop = () => {
      clearTimeout(t);
      reject(signal.reason ?? new DOMException('aborted', 'AbortError'));
    };
    signal?.addEventListener('abort', stop, { once: true });
  });
}

// A UUID for an Idempotency-Key; crypto.randomUUID needs a secure context,
// getRandomValues does not.
export function newKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

// The first heading of a view, focusable so that a route change can move
// focus (and a screen reader's attention) to it.
export function heading(text) {
  return h('h1', { tabindex: '-1', class: 'view-title' }, text);
}
