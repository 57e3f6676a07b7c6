// Following an event stream with the bearer token. EventSource cannot send
// an Authorization header, so this reads the stream with fetch and parses
// Server-Sent Events itself. A dropped stream is opened again with bounded,
// jittered exponential backoff; after MAX_ATTEMPTS failures in a row it
// gives up and says so. Aborting `signal` stops everything at once.

import { authHeaders, retryAfter } from './api.js';
import { signOut } from './auth.js';
import { delay } from './dom.js';

export const MAX_ATTEMPTS = 6;
const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10_000;
// The server sends a keepalive every 15 s; this much silence is a dead line.
const SILENCE_MS = 45_000;
const HELD_MS = 5_000;

// Splits a byte stream into events: {event, data}. Lines end in \n or \r\n;
// a blank line ends an event; lines starting with ':' are comments.
export async function* parseEvents(body, onBytes) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = 'message';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onBytes?.();
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (data.length) yield { event, data: data.join('\n') };
          event = 'message';
          data = [];
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') event = v;
        else if (field === 'data') data.push(v);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// Follows `path` until `isDone()` after an event, the server says the thing
// is gone, the person is signed out, or MAX_ATTEMPTS failures in a row.
// onEvent({event, data}); onStatus({state, attempt, ms}) with state one of
// 'connecting', 'live', 'waiting', 'gave_up', 'done', 'gone'.
// Resolves to the final state ('done', 'gave_up', 'gone', 'unauthorized', 'aborted').
// `firstBackoffMs` shortens the waits (the browser test uses it).
export async function follow(path, { signal, onEvent, onStatus, isDone, firstBackoffMs = FIRST_BACKOFF_MS }) {
  let failures = 0;
  while (!signal.aborted) {
    onStatus({ state: 'connecting', attempt: failures });
    const line = new AbortController();
    const stop = () => line.abort();
    signal.addEventListener('abort', stop, { once: true });
    let silence = 0;
    const heard = () => {
      clearTimeout(silence);
      silence = setTimeout(() => line.abort(), SILENCE_MS);
    };
    let wait = null;
    try {
      heard();
      const res = await fetch(path, {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        signal: line.signal,
        cache: 'no-store',
        credentials: 'omit',
      });
      if (res.status === 401) {
        signOut('expired');
        return 'unauthorized';
      }
      if (res.status === 404) {
        onStatus({ state: 'gone' });
        return 'gone';
      }
      if (!res.ok || !res.body) {
        wait = res.status === 429 || res.status === 503 ? retryAfter(res) : null;
        throw new Error(`HTTP ${res.status}`);
      }
      onStatus({ state: 'live' });
      const opened = Date.now();
      for await (const ev of parseEvents(res.body, heard)) {
        // A line that held for a while was not a failure; one that drops
        // right after its first event still counts, so the bound holds.
        if (Date.now() - opened > HELD_MS) failures = 0;
        onEvent(ev);
        if (isDone()) {
          onStatus({ state: 'done' });
          return 'done';
        }
      }
      if (isDone()) {
        onStatus({ state: 'done' });
        return 'done';
      }
    } catch {
      // A dropped or refused stream: counted below.
    } finally {
      clearTimeout(silence);
      signal.removeEventListener('abort', stop);
      line.abort();
    }
    if (signal.aborted) break;
    failures += 1;
    if (failures > MAX_ATTEMPTS) {
      onStatus({ state: 'gave_up', attempt: failures - 1 });
      return 'gave_up';
    }
    const backoff = Math.min(firstBackoffMs * 2 ** (failures - 1), MAX_BACKOFF_MS);
    const ms = wait ?? Math.round(backoff / 2 + (Math.random() * backoff) / 2);
    onStatus({ state: 'waiting', attempt: failures, ms });
    try {
      await delay(ms, signal);
    } catch {
      break;
    }
  }
  return 'aborted';
}
