// The page's entry: signs in, routes by path (History API), and gives each
// view a context. A view returns {dispose}; leaving it (another route, Back,
// closing the tab) disposes it, which aborts whatever it was following.

import {
  fromFragment, loadConfig, onSessionChange, session, signIn, signInAsDemo, signInUrl, signOut, start,
} from './auth.js';
import { h, heading, text } from './dom.js';
import { accountView, billingReturnView } from './account.js';
import { createView } from './create.js';
import { followView } from './follow.js';
import { historyView } from './history.js';

const ROUTES = [
  { path: /^\/(?:app\/?)?$/, view: createView, nav: 'create', title: 'New design' },
  { path: /^\/app\/history$/, view: historyView, nav: 'history', title: 'History' },
  { path: /^\/app\/generations\/([0-9a-fA-F-]{36})$/, view: followView, nav: 'history', title: 'Your designs' },
  { path: /^\/app\/account$/, view: accountView, nav: 'account', title: 'Account' },
  { path: /^\/billing\/(success|cancel)$/, view: billingReturnView, nav: 'account', title: 'Payment' },
];

const main = document.getElementById('main');
const announcer = document.getElementById('announce');
const sessionBox = document.getElementById('session');
let current = null;
let moveFocus = false;

function notFound(el) {
  el.append(heading('Page not found'), h('p', null, 'There is nothing here. ', h('a', { href: '/' }, 'Design a garden'), '.'));
  return { dispose() {} };
}

function signInView(el) {
  const { dev_mode } = session.config;
  const reasons = {
    expired: 'Your session has ended. Please sign in again.',
    signed_out: 'You are signed out.',
  };
  const reason = session.reason ? reasons[session.reason] ?? session.reason : null;
  const problem = h('p', { class: 'field-error', role: 'alert', hidden: !reason }, reason ?? '');
  el.append(heading('Sign in to Terrace'), problem,
    h('p', { class: 'lead' }, 'Terrace redraws the garden of a property in the style you choose, from pictures of the property itself.'));
  if (dev_mode) {
    const demo = h('button', { type: 'button', class: 'primary' }, 'Continue as the demo user');
    demo.addEventListener('click', async () => {
      const why = await signInAsDemo();
      if (why) {
        problem.hidden = false;
        text(problem, why);
      }
    });
    el.append(h('p', { class: 'hint' }, 'This server runs in dev mode with a demo user.'), h('p', null, demo));
  }
  const url = signInUrl();
  if (url) el.append(h('p', null, h('a', { href: url, class: 'button primary' }, 'Sign in')));
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false' });
  const form = h('form', { class: 'token-form' },
    h('div', { class: 'field' }, h('label', { for: 'token' }, 'Access token'), token),
    h('button', { type: 'submit', class: 'secondary' }, 'Use this token'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const why = signIn(token.value);
    if (why) {
      problem.hidden = false;
      text(problem, why);
      token.focus();
    }
  });
  el.append(h('details', { open: !url && !dev_mode }, h('summary', null, 'Sign in with an access token'), form));
  if (!url && !dev_mode) el.append(h('p', { class: 'hint' }, 'Ask the people who run this server for an access token.'));
  return { dispose() {} };
}

function showSession() {
  if (!session.token) {
    sessionBox.replaceChildren();
    return;
  }
  const out = h('button', { type: 'button', class: 'link-button' }, 'Sign out');
  out.addEventListener('click', () => signOut('signed_out'));
  const who = session.demo ? 'the demo user' : session.email ?? 'your account';
  sessionBox.replaceChildren(h('span', { class: 'who' }, `Signed in as ${who}`), out);
}

function render(state = history.state) {
  current?.dispose();
  current = null;
  main.replaceChildren();
  main.removeAttribute('aria-busy');
  const route = ROUTES.find((r) => r.path.test(location.pathname));
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (session.token && route?.nav === a.dataset.nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.querySelector('nav.main').hidden = !session.token;
  const focus = moveFocus;
  moveFocus = false;
  const ctx = {
    params: route ? route.path.exec(location.pathname).slice(1) : [],
    state,
    announcer,
    navigate,
    // After a navigation, focus goes to the new view's heading.
    focusTitle: () => focus && main.querySelector('h1')?.focus(),
  };
  if (!session.token) {
    document.title = 'Sign in · Terrace';
    current = signInView(main, ctx);
    if (focus) main.querySelector('h1')?.focus();
    return;
  }
  document.title = `${route?.title ?? 'Not found'} · Terrace`;
  current = route ? route.view(main, ctx) : notFound(main, ctx);
}

export function navigate(path, state = null) {
  history.pushState(state, '', path);
  moveFocus = true;
  render(state);
}

// Links inside the app change the view without loading the page again.
document.addEventListener('click', (e) => {
  const a = e.target.closest?.('a[href]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  if (a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !ROUTES.some((r) => r.path.test(url.pathname))) return;
  if (url.pathname === location.pathname && url.search === location.search && url.hash) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});
addEventListener('popstate', () => {
  moveFocus = true;
  render();
});
// Closing the tab or leaving the page stops every stream and request.
addEventListener('pagehide', () => {
  current?.dispose();
  current = null;
});
// A sign-in redirect that lands on this very page changes only the
// fragment; signing in or out re-renders through onSessionChange.
addEventListener('hashchange', fromFragment);
addEventListener('pageshow', (e) => {
  if (e.persisted) render();
});

try {
  await loadConfig();
} catch {
  // Without the config the page still works with a pasted or stored token.
}
start();
onSessionChange(() => {
  showSession();
  moveFocus = true;
  render();
});
showSession();
render();
