// Calls to Terrace's API with the session's bearer token. Problems
// (application/problem+json) become ApiErrors; a 401 signs out; 429, 503
// and 409 account_busy are retried after their Retry-After, a bounded number
// of times, when sending again is safe.

import { session, signOut } from './auth.js';
import { delay } from './dom.js';

export class ApiError extends Error {
  constructor(status, problem, retryAfterMs = null) {
    super(problem?.detail ?? problem?.title ?? `HTTP ${status}`);
    this.status = status;
    this.code = problem?.code ?? (status === 0 ? 'network' : `http_${status}`);
    this.errors = Array.isArray(problem?.errors) ? problem.errors : [];
    this.requestId = problem?.request_id ?? null;
    this.retryAfterMs = retryAfterMs;
  }
}

const MAX_WAIT_MS = 30_000;
const PASSING = new Set(['timeout', 'store_unavailable', 'store_timeout', 'blob_store_unavailable']);

// Retry-After as milliseconds (seconds or an HTTP date), or null.
export function retryAfter(res) {
  const v = res.headers.get('retry-after');
  if (!v) return null;
  const secs = Number(v);
  const ms = Number.isFinite(secs) ? secs * 1000 : Date.parse(v) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), MAX_WAIT_MS) : null;
}

async function problemOf(res) {
  try {
    return await res.json();
  } catch {
    return null;
  }
}

export function authHeaders(extra = {}) {
  return session.token ? { Authorization: `Bearer ${session.token}`, ...extra } : { ...extra };
}

// Sends a request; resolves to the Response when it is 2xx.
//   body: a value sent as JSON; key: an Idempotency-Key;
//   retries: how many times a busy answer is retried;
//   onWait(ms, error): told before each wait, to say so on the page.
export async function call(path, { method = 'GET', body, key, signal, auth = true, retries = 3, onWait } = {}) {
  const idempotent = method === 'GET' || Boolean(key);
  for (let attempt = 0; ; attempt++) {
    const headers = auth ? authHeaders({ Accept: 'application/json' }) : { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (key) headers['Idempotency-Key'] = key;
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (e) {
      if (e?.name === 'AbortError' || signal?.aborted) throw e;
      if (idempotent && attempt < retries) {
        const ms = 500 * 2 ** attempt;
        onWait?.(ms, new ApiError(0, null));
        await delay(ms, signal);
        continue;
      }
      throw new ApiError(0, null);
    }
    if (res.ok) return res;
    const problem = await problemOf(res);
    const wait = retryAfter(res);
    const error = new ApiError(res.status, problem, wait);
    if (res.status === 401 && auth) {
      signOut('expired');
      throw error;
    }
    // Shed before any work was done (429, 503 overloaded, 409 account_busy),
    // or a passing fault that is safe to send again after (GET, or a keyed
    // request). A 503 that will not pass (billing_unavailable) is not retried.
    const busy =
      res.status === 429 ||
      (res.status === 409 && error.code === 'account_busy') ||
      (res.status === 503 && (error.code === 'overloaded' || (idempotent && PASSING.has(error.code))));
    if (busy && attempt < retries) {
      const ms = wait ?? Math.min(1000 * 2 ** attempt, MAX_WAIT_MS);
      onWait?.(ms, error);
      await delay(ms, signal);
      continue;
    }
    throw error;
  }
}

export const getJson = async (path, opts) => (await call(path, opts)).json();
export const postJson = async (path, body, opts = {}) => (await call(path, { ...opts, method: 'POST', body })).json();

// An image of the API as a blob: URL (the token cannot ride on <img src>).
export async function blobUrl(path, signal) {
  const res = await call(path, { signal, retries: 2 });
  return URL.createObjectURL(await res.blob());
}
