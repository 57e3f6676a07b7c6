// The account: balance, transactions, subscription, and buying credits
// through Stripe Checkout. Billing answers 404 on servers without it: the
// section then says so and offers nothing.

import { ApiError, call, getJson, postJson } from './api.js';
import { explain, money, plural, when } from './words.js';
import { announce, delay, h, heading, newKey, text } from './dom.js';

const KINDS = { credit: 'Added', hold: 'Held for a design', capture: 'Spent', void: 'Returned' };
const SOURCES = { trial: 'trial credits', token: 'bought credits', subscription: 'subscription' };
const PLANS = { monthly_pro: 'Monthly Pro' };
const planName = (id) => PLANS[id] ?? id.replace(/_/g, ' ');
const SUB_STATUS = { none: 'No subscription', active: 'Active', past_due: 'Payment overdue', cancelled: 'Cancelled' };

// Leaves for a Stripe page, but only for an http(s) address.
function leaveFor(url) {
  const u = new URL(url, location.href);
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new ApiError(502, { detail: 'an unexpected address' });
  location.assign(u.href);
}

function balanceList(a) {
  const available = a.trial_credits + a.token_balance;
  return h('dl', { class: 'balance' },
    h('div', null, h('dt', null, 'Available'), h('dd', { id: 'balance-available' }, plural(available, 'credit'))),
    h('div', null, h('dt', null, 'Trial credits'), h('dd', { id: 'balance-trial' }, String(a.trial_credits))),
    h('div', null, h('dt', null, 'Bought credits'), h('dd', { id: 'balance-tokens' }, String(a.token_balance))),
    h('div', null, h('dt', null, 'Held by designs in progress'), h('dd', { id: 'balance-held' }, String(a.held))),
    h('div', null, h('dt', null, 'Spent'), h('dd', null, String(a.captured))));
}

function transactions(signal) {
  const body = h('tbody');
  const state = h('p', { class: 'hint', role: 'status' });
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Show older transactions');
  let cursor = null;
  async function load() {
    more.disabled = true;
    try {
      const q = new URLSearchParams({ limit: '10' });
      if (cursor) q.set('cursor', cursor);
      const { items, next_cursor } = await getJson(`/v1/account/transactions?${q}`, { signal });
      for (const t of items) {
        body.append(h('tr', null,
          h('td', { 'data-label': 'When' }, when(t.created_at)),
          h('td', { 'data-label': 'What' }, KINDS[t.kind] ?? t.kind),
          h('td', { 'data-label': 'Credits', class: 'num' }, String(t.amount)),
          h('td', { 'data-label': 'From' }, SOURCES[t.source] ?? t.source),
          h('td', { 'data-label': 'For' }, t.area ? t.area.replace(/_/g, ' ') : t.reference ?? '')));
      }
      cursor = next_cursor;
      more.hidden = !next_cursor;
      text(state, body.children.length ? '' : 'No transactions yet.');
    } catch (e) {
      if (!signal.aborted) text(state, explain(e.code, e.message));
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener('click', load);
  load();
  return h('section', { 'aria-labelledby': 'tx-title' },
    h('h2', { id: 'tx-title' }, 'Transactions'),
    h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-labelledby': 'tx-title' },
      h('table', { class: 'tx' },
        h('thead', null, h('tr', null, ['When', 'What', 'Credits', 'From', 'For'].map((c) => h('th', { scope: 'col' }, c)))),
        body)),
    state, more);
}

function billing(ctx, signal, onChange) {
  const section = h('section', { 'aria-labelledby': 'billing-title', class: 'billing' },
    h('h2', { id: 'billing-title' }, 'Buy credits and subscribe'));
  const note = h('p', { class: 'hint', role: 'status', tabindex: '-1' }, 'Loading…');
  const packages = h('ul', { class: 'packages' });
  const sub = h('div', { class: 'subscription' });
  const portal = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Manage billing and invoices');
  section.append(note, packages, sub, h('div', { class: 'actions' }, portal));
  let busy = false;
  // Set when the server says payments are not available at all.
  let closed = false;

  // One billing action at a time; its error said in the section.
  async function act(button, run) {
    if (busy || closed) return;
    busy = true;
    section.setAttribute('aria-busy', 'true');
    for (const b of section.querySelectorAll('button')) b.disabled = true;
    const label = button.textContent;
    text(button, 'One moment…');
    try {
      await run();
    } catch (e) {
      if (signal.aborted) return;
      closed = e.code === 'billing_unavailable' || e.status === 404;
      text(note, e.status === 404
        ? 'Buying credits is not available on this server yet.'
        : explain(e.code, e.message));
    } finally {
      busy = false;
      section.removeAttribute('aria-busy');
      if (closed) section.classList.add('unavailable');
      for (const b of section.querySelectorAll('button')) b.disabled = closed;
      text(button, label);
      // A disabled button cannot keep the focus: the note that says why takes it.
      if (closed) note.focus();
    }
  }

  function showSubscription(s, plans) {
    const nodes = [h('h3', null, 'Subscription')];
    const active = s.status === 'active' || s.status === 'past_due';
    nodes.push(h('p', { id: 'subscription-status' }, `${SUB_STATUS[s.status] ?? s.status}` +
      (s.plan ? ` (${planName(s.plan)})` : '') +
      (active && s.current_period_end ? `${s.cancel_at_period_end ? ', ends' : ', renews'} on ${when(s.current_period_end)}` : '') + '.'));
    if (active && !s.cancel_at_period_end) {
      const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel the subscription');
      const confirm = h('div', { class: 'confirm', hidden: true },
        h('p', null, 'Cancel at the end of the period you have paid for?'));
      const yes = h('button', { type: 'button', class: 'danger' }, 'Yes, cancel it');
      const no = h('button', { type: 'button', class: 'secondary' }, 'Keep it');
      confirm.append(h('div', { class: 'actions' }, yes, no));
      cancel.addEventListener('click', () => {
        confirm.hidden = false;
        no.focus();
      });
      no.addEventListener('click', () => {
        confirm.hidden = true;
        cancel.focus();
      });
      yes.addEventListener('click', () => act(yes, async () => {
        const s2 = await postJson('/v1/billing/subscription/cancel', { at_period_end: true }, { signal });
        showSubscription(s2, plans);
        announce(ctx.announcer, 'The subscription will end at the end of the period.');
        onChange();
      }));
      nodes.push(cancel, confirm);
    } else if (active) {
      nodes.push(h('p', { class: 'hint' }, 'It stays active until then. To keep it going, use “Manage billing and invoices”.'));
    } else {
      for (const p of plans) {
        const b = h('button', { type: 'button', class: 'primary', 'data-plan': p.id },
          `Subscribe to ${planName(p.id)}: ${money(p.price_cents, p.currency)} a ${p.interval}, unlimited designs`);
        b.addEventListener('click', () => act(b, async () => {
          const r = await postJson('/v1/billing/subscription', { plan_id: p.id }, { signal, key: newKey() });
          leaveFor(r.checkout_url);
        }));
        nodes.push(b);
      }
    }
    sub.replaceChildren(...nodes);
  }

  (async () => {
    let offer;
    try {
      offer = await getJson('/v1/billing/packages', { signal, auth: false });
    } catch (e) {
      if (signal.aborted) return;
      text(note, e.status === 404
        ? 'Buying credits is not available on this server yet. Your trial credits still work.'
        : explain(e.code, e.message));
      section.classList.add('unavailable');
      return;
    }
    text(note, 'Payment happens on Stripe’s secure page; you come back here afterwards.');
    packages.replaceChildren(...offer.packages.map((p) => {
      const b = h('button', { type: 'button', class: 'secondary', 'data-package': p.id },
        `Buy ${plural(p.tokens, 'credit')} for ${money(p.price_cents, p.currency)}`);
      b.addEventListener('click', () => act(b, async () => {
        const r = await postJson('/v1/billing/checkout', { package_id: p.id }, { signal, key: newKey() });
        leaveFor(r.checkout_url);
      }));
      return h('li', null, b);
    }));
    try {
      showSubscription(await getJson('/v1/billing/subscription', { signal }), offer.plans ?? []);
    } catch (e) {
      if (!signal.aborted) sub.replaceChildren(h('p', { class: 'hint' }, explain(e.code, e.message)));
    }
    portal.hidden = false;
    portal.addEventListener('click', () => act(portal, async () => {
      try {
        const r = await postJson('/v1/billing/portal', {}, { signal });
        leaveFor(r.url);
      } catch (e) {
        if (e.status === 409) throw new ApiError(409, { detail: 'You have not paid for anything yet, so there is nothing to manage.', code: 'nothing_to_manage' });
        throw e;
      }
    }));
  })();
  return section;
}

export function accountView(main, ctx) {
  const abort = new AbortController();
  const balance = h('section', { 'aria-labelledby': 'balance-title' },
    h('h2', { id: 'balance-title' }, 'Balance'), h('p', { class: 'hint' }, 'Loading…'));
  const refresh = () => getJson('/v1/account', { signal: abort.signal })
    .then((a) => balance.replaceChildren(h('h2', { id: 'balance-title' }, 'Balance'), balanceList(a),
      a.subscription?.status === 'active' ? h('p', { class: 'hint' }, 'Your subscription covers new designs.') : ''))
    .catch((e) => {
      if (!abort.signal.aborted) balance.append(h('p', null, explain(e.code, e.message)));
    });
  main.append(heading('Your account'), balance, billing(ctx, abort.signal, refresh), transactions(abort.signal));
  ctx.focusTitle();
  refresh();
  return { dispose: () => abort.abort() };
}

// Where Stripe Checkout sends the person back: /billing/success or /billing/cancel.
export function billingReturnView(main, ctx) {
  const abort = new AbortController();
  const ok = ctx.params[0] === 'success';
  const shown = h('p', { class: 'balance-line', role: 'status' });
  main.append(
    heading(ok ? 'Thank you for your payment' : 'Checkout cancelled'),
    h('p', { class: 'lead' }, ok
      ? 'Your credits are added as soon as Stripe confirms the payment, usually within seconds.'
      : 'Nothing was charged. You can buy credits whenever you like.'),
    shown,
    h('p', { class: 'actions' },
      h('a', { href: '/app/account', class: 'button secondary' }, 'Go to your account'),
      h('a', { href: '/', class: 'button primary' }, 'Design a garden')));
  ctx.focusTitle();
  // Until the webhook lands: the balance, every 2 s for at most 60 s.
  (async () => {
    let first = null;
    for (let i = 0; i < 30 && !abort.signal.aborted; i++) {
      try {
        const a = await getJson('/v1/account', { signal: abort.signal });
        const total = a.trial_credits + a.token_balance;
        first ??= a.token_balance;
        text(shown, `You have ${plural(total, 'credit')} (${a.token_balance} bought).`);
        if (!ok || a.token_balance > first || i > 0 && a.subscription?.status === 'active') return;
        await delay(2000, abort.signal);
      } catch {
        return;
      }
    }
  })();
  return { dispose: () => abort.abort() };
}
