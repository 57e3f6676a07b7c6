// Past generations, newest first: a status filter and paging, kept in the
// address (/app/history?status=…&cursor=…) so that Back and reload work.

import { getJson } from './api.js';
import { STATUSES, areaName, explain, plural, styleName, when } from './words.js';
import { h, heading, text } from './dom.js';

const PAGE = 10;

export function historyView(main, ctx) {
  const abort = new AbortController();
  const q = new URLSearchParams(location.search);
  const status = q.get('status') ?? '';
  const cursor = q.get('cursor') ?? '';
  // The cursors of the pages before this one, for "Previous page".
  const back = (q.get('back') ?? '').split(',').filter(Boolean).map(decodeURIComponent);

  const select = h('select', { id: 'status-filter', name: 'status' },
    h('option', { value: '' }, 'Every status'),
    Object.entries(STATUSES).map(([v, words]) => h('option', { value: v }, words)));
  select.value = status;
  const form = h('form', { class: 'filter', role: 'search', 'aria-label': 'Filter your designs' },
    h('div', { class: 'field' }, h('label', { for: select.id }, 'Show'), select),
    h('button', { type: 'submit', class: 'secondary' }, 'Apply filter'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.navigate(select.value ? `/app/history?status=${encodeURIComponent(select.value)}` : '/app/history');
  });

  const state = h('p', { class: 'hint', role: 'status' }, 'Loading…');
  const list = h('ul', { class: 'history', 'aria-label': 'Your designs' });
  const paging = h('nav', { class: 'paging', 'aria-label': 'Pages' });
  main.append(heading('Your designs so far'), form, state, list, paging);
  ctx.focusTitle();

  const url = (s, c, b) => {
    const p = new URLSearchParams();
    if (s) p.set('status', s);
    if (c) p.set('cursor', c);
    if (b.length) p.set('back', b.map(encodeURIComponent).join(','));
    const qs = p.toString();
    return qs ? `/app/history?${qs}` : '/app/history';
  };

  const api = new URLSearchParams({ limit: String(PAGE) });
  if (status) api.set('status', status);
  if (cursor) api.set('cursor', cursor);
  getJson(`/v1/generations?${api}`, { signal: abort.signal })
    .then(({ items, next_cursor }) => {
      const page = back.length + 1;
      const filter = status ? ` ${STATUSES[status]?.toLowerCase() ?? status}` : '';
      text(state, items.length
        ? `Page ${page}: ${plural(items.length, `${filter.trim() ? `${filter.trim()} ` : ''}design request`)}.`
        : page > 1 ? 'No more designs.' : `You have no${filter} designs yet.`);
      list.replaceChildren(...items.map((g) => h('li', { class: 'history-item', 'data-status': g.status },
        h('a', { href: `/app/generations/${g.id}` }, g.geocoded_address ?? g.address),
        h('p', { class: 'hint' }, `${when(g.created_at)} · `, h('strong', null, STATUSES[g.status] ?? g.status),
          g.error ? ` · ${explain(g.error.code, g.error.message)}` : ''),
        h('p', { class: 'hint' }, g.areas.map((a) => `${areaName(a.area)} (${styleName(a.style)})`).join(', ')))));
      const links = [];
      if (back.length) {
        const prev = back.slice(0, -1);
        const prevCursor = back[back.length - 1] === '-' ? '' : back[back.length - 1];
        links.push(h('a', { href: url(status, prevCursor, prev), class: 'button secondary' }, 'Previous page'));
      }
      if (next_cursor) {
        links.push(h('a', { href: url(status, next_cursor, [...back, cursor || '-']), class: 'button secondary', rel: 'next' }, 'Next page'));
      }
      paging.replaceChildren(...links);
    })
    .catch((e) => {
      if (!abort.signal.aborted) text(state, explain(e.code, e.message));
    });

  return { dispose: () => abort.abort() };
}
