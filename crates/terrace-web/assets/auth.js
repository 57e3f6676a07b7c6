// Who is signed in. The token lives in this tab only (sessionStorage); it
// comes from Supabase's redirect (#access_token=…), from a pasted token, or
// in dev mode from the server's demo token. The session ends when the
// token's `exp` passes or the API answers 401.

const TOKEN = 'terrace.token';
const SIGNED_OUT = 'terrace.signed-out';

export const session = {
  token: null,
  exp: 0,
  demo: false,
  email: null,
  // Why the person is signed out: 'expired', 'signed_out', or a message.
  reason: null,
  config: { dev_mode: false, demo_token: null, supabase_url: null },
};

const listeners = new Set();
export const onSessionChange = (fn) => listeners.add(fn);
const emit = () => listeners.forEach((fn) => fn(session));

// The JWT's payload, or null. Its signature is the server's business.
export function claims(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

let timer = 0;
function watchExpiry() {
  clearTimeout(timer);
  if (!session.token) return;
  const left = session.exp * 1000 - Date.now();
  if (left <= 0) return signOut('expired');
  // setTimeout holds at most 2^31-1 ms; check again then.
  timer = setTimeout(watchExpiry, Math.min(left, 2 ** 31 - 1));
}
// A sleeping laptop delays timers: check when the tab is shown again.
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') watchExpiry();
});

// Signs in with `token`; returns null, or why the token cannot be used.
export function signIn(token, { demo = false } = {}) {
  const c = claims(token.trim());
  if (!c || typeof c.exp !== 'number') return 'That is not an access token Terrace can read.';
  if (c.exp * 1000 <= Date.now()) return 'That access token has expired. Please sign in again.';
  Object.assign(session, { token: token.trim(), exp: c.exp, demo, email: c.email ?? null, reason: null });
  if (demo) sessionStorage.removeItem(TOKEN);
  else sessionStorage.setItem(TOKEN, session.token);
  sessionStorage.removeItem(SIGNED_OUT);
  watchExpiry();
  emit();
  return null;
}

export function signOut(reason = 'signed_out') {
  if (!session.token && session.reason === reason) return;
  clearTimeout(timer);
  if (reason === 'signed_out' && session.demo) sessionStorage.setItem(SIGNED_OUT, '1');
  sessionStorage.removeItem(TOKEN);
  Object.assign(session, { token: null, exp: 0, demo: false, email: null, reason });
  emit();
}

// Takes a Supabase redirect's fragment (#access_token=…&expires_in=…, or
// #error=…&error_description=…) and clears it from the address bar.
function takeFragment() {
  const hash = location.hash.slice(1);
  if (!/(^|&)(access_token|error)=/.test(hash)) return {};
  const p = new URLSearchParams(hash);
  history.replaceState(history.state, '', location.pathname + location.search);
  return { token: p.get('access_token'), error: p.get('error_description') ?? p.get('error') };
}

export async function loadConfig() {
  const res = await fetch('/app/config.json', { cache: 'no-store', credentials: 'omit' });
  if (res.ok) session.config = await res.json();
  return session.config;
}

// Signs in with the address's #access_token=…, if it has one (or takes
// the #error=… of a failed sign-in). Returns whether there was either.
export function fromFragment() {
  const frag = takeFragment();
  if (frag.token) {
    const why = signIn(frag.token);
    if (why) signOut(why);
  } else if (frag.error) {
    signOut(`Sign-in failed: ${frag.error}`);
  }
  return Boolean(frag.token || frag.error);
}

// The first sign-in of a page load.
export function start() {
  const tried = fromFragment();
  if (session.token) return;
  const stored = sessionStorage.getItem(TOKEN);
  if (stored && !signIn(stored)) return;
  if (stored) sessionStorage.removeItem(TOKEN);
  // The demo user, unless the person just tried another way in (then the
  // page says why that failed) or signed out of it.
  const { dev_mode, demo_token } = session.config;
  if (dev_mode && demo_token && !tried && !sessionStorage.getItem(SIGNED_OUT)) signIn(demo_token, { demo: true });
}

// Dev mode: ask the server for the demo token again (it changes when the
// server restarts) and sign in with it.
export async function signInAsDemo() {
  const { demo_token } = await loadConfig();
  return demo_token ? signIn(demo_token, { demo: true }) : 'This server has no demo user.';
}

// Where the "Sign in" link goes: TERRACE_SUPABASE_URL, told to come back here.
export function signInUrl() {
  const base = session.config.supabase_url;
  if (!base) return null;
  try {
    const u = new URL(base);
    u.searchParams.set('redirect_to', `${location.origin}/`);
    return u.href;
  } catch {
    return null;
  }
}
