// One generation, live: each area's stage and progress from the event
// stream, errors in words, a cancel button; then each design beside the
// picture it was drawn from, with a download. Following stops when the view
// is left or the page is closed (the view's AbortController).

import { ApiError, blobUrl, call, getJson } from './api.js';
import { MAX_ATTEMPTS, follow } from './sse.js';
import { STAGES, STATUSES, TERMINAL, areaName, explain, plural, styleName, when } from './words.js';
import { announce, h, heading, text } from './dom.js';

const STREET_FIRST = new Set(['front_yard', 'walkway']);

function summaryOf(g) {
  const n = g.areas.length;
  const done = g.areas.filter((a) => a.status === 'completed').length;
  switch (g.status) {
    case 'completed':
      return n === 1 ? 'Your design is ready.' : `All ${n} designs are ready.`;
    case 'partially_completed':
      return `${done} of ${n} designs are ready; the credits of the others were returned.`;
    case 'failed':
      return `No design could be made${g.error ? `: ${explain(g.error.code, g.error.message)}` : '.'} Your credits were returned.`;
    case 'cancelled':
      return 'Cancelled. The credits of unfinished areas were returned.';
    case 'pending':
      return 'Waiting to start…';
    default:
      return `Working on it: ${done} of ${n} ready.`;
  }
}

export function followView(main, ctx) {
  const id = ctx.params[0];
  const abort = new AbortController();
  const urls = new Set();
  const sources = new Map();
  let last = ctx.state?.generation ?? null;
  let following = false;
  let sawProgress = false;

  const title = heading('Your designs');
  const address = h('p', { class: 'lead' });
  const status = h('p', { class: 'gen-status', role: 'status' });
  const meta = h('p', { class: 'hint' });
  const line = h('p', { class: 'connection hint' });
  const retry = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Try again to follow');
  const cancel = h('button', { type: 'button', class: 'danger', hidden: true }, 'Cancel the unfinished designs');
  const cancelNote = h('p', { class: 'hint', role: 'status' });
  const list = h('ol', { class: 'area-cards' });
  const dialog = h('dialog', { class: 'viewer', 'aria-labelledby': 'viewer-title' });
  const cards = new Map();
  main.append(title, address, status, meta, h('div', { class: 'actions' }, cancel, retry), cancelNote, line, list, dialog);
  ctx.focusTitle();

  function card(area) {
    let c = cards.get(area.area);
    if (c) return c;
    const name = `${areaName(area.area)}, ${styleName(area.style)}`;
    const labelId = `card-${area.area}`;
    c = {
      el: null,
      stage: h('p', { class: 'stage' }),
      bar: h('progress', { max: 100, value: 0, 'aria-labelledby': labelId }),
      error: h('p', { class: 'area-error', hidden: true }),
      pictures: h('div', { class: 'pictures' }),
      name,
      loaded: false,
      said: '',
    };
    c.el = h('li', { class: 'area-card', 'aria-labelledby': labelId },
      h('h2', { id: labelId }, areaName(area.area), h('span', { class: 'style-name' }, ` · ${styleName(area.style)}`)),
      c.stage, c.bar, c.error, c.pictures);
    cards.set(area.area, c);
    list.append(c.el);
    return c;
  }

  function stageWords(a) {
    if (a.status === 'completed') return 'Ready';
    if (a.status === 'failed') return 'Could not be drawn';
    if (a.status === 'cancelled') return 'Cancelled';
    return `${STAGES[a.stage] ?? a.stage} (${a.progress}%)`;
  }

  function render(g) {
    last = g;
    text(address, g.geocoded_address ?? g.address);
    text(status, summaryOf(g));
    const charged = g.captured ? ` Charged ${plural(g.captured, 'credit')}.` : '';
    const returned = g.voided ? ` Returned ${plural(g.voided, 'credit')}.` : '';
    text(meta, `Started ${when(g.created_at)}. ${STATUSES[g.status] ?? g.status}.${charged}${returned}`);
    const terminal = TERMINAL.has(g.status);
    cancel.hidden = terminal;
    const changes = [];
    for (const a of g.areas) {
      const c = card(a);
      const words = stageWords(a);
      text(c.stage, words);
      c.bar.value = a.status === 'completed' ? 100 : a.progress;
      c.bar.hidden = a.status !== 'pending' && a.status !== 'processing';
      c.el.dataset.status = a.status;
      // A cancelled area's stage says so already.
      if (a.error && a.status !== 'completed' && a.error.code !== 'cancelled') {
        text(c.error, explain(a.error.code, a.error.message));
        c.error.hidden = false;
      }
      // Announce stages and endings, not every percent.
      const said = `${a.status}/${a.stage}`;
      if (said !== c.said) {
        if (c.said) changes.push(`${c.name}: ${a.status === 'processing' ? STAGES[a.stage] ?? a.stage : words}.`);
        c.said = said;
      }
      if (a.status === 'completed' && !c.loaded) {
        c.loaded = true;
        pictures(a, c);
      }
      if (!sawProgress && (a.progress > 0 || (a.stage !== 'queued' && a.status !== 'pending'))) {
        sawProgress = true;
        performance.mark('terrace:first-progress');
      }
    }
    if (terminal) changes.push(summaryOf(g));
    if (changes.length) announce(ctx.announcer, changes.join(' '));
  }

  function source(kind) {
    if (!sources.has(kind)) {
      const p = blobUrl(`/v1/generations/${id}/source-images/${kind}`, abort.signal).then((u) => {
        urls.add(u);
        return u;
      });
      p.catch(() => {});
      sources.set(kind, p);
    }
    return sources.get(kind);
  }

  // The design beside the picture it was drawn from: Street View for the
  // front yard and walkway (satellite when there is no panorama), satellite
  // for the rest.
  async function pictures(a, c) {
    const label = `${areaName(a.area)} in ${styleName(a.style)} style`;
    text(c.pictures, 'Loading the pictures…');
    try {
      const design = await blobUrl(`/v1/generations/${id}/areas/${a.area}/image`, abort.signal);
      urls.add(design);
      const order = STREET_FIRST.has(a.area) ? ['street_view', 'satellite'] : ['satellite', 'street_view'];
      let from = null;
      for (const kind of order) {
        try {
          from = { kind, url: await source(kind) };
          break;
        } catch (e) {
          if (abort.signal.aborted) return;
          if (!(e instanceof ApiError && e.status === 404)) break;
        }
      }
      const designImg = h('img', { src: design, alt: `The new design: ${label}`, width: 256, height: 256 });
      const view = h('button', { type: 'button', class: 'secondary' }, `View the ${areaName(a.area).toLowerCase()} design larger`);
      view.addEventListener('click', () => open(design, `The new design: ${label}`, view));
      const file = `terrace-${a.area}-${a.style}.png`;
      c.pictures.replaceChildren(
        h('div', { class: 'pair' },
          h('figure', null, designImg, h('figcaption', null, 'The design')),
          from
            ? h('figure', null,
              h('img', { src: from.url, alt: `The ${from.kind === 'street_view' ? 'Street View' : 'satellite'} picture it was drawn from`, width: 256, height: 256 }),
              h('figcaption', null, `Drawn from: ${from.kind === 'street_view' ? 'Street View' : 'satellite picture'}`))
            : h('p', { class: 'hint' }, 'The picture it was drawn from is not available.')),
        h('div', { class: 'actions' },
          view,
          h('a', { href: design, download: file, class: 'button secondary' }, `Download the ${areaName(a.area).toLowerCase()} design`)));
    } catch (e) {
      if (abort.signal.aborted) return;
      c.loaded = false;
      text(c.pictures, `The design could not be loaded: ${explain(e.code, e.message)}`);
    }
  }

  function open(url, alt, from) {
    const close = h('button', { type: 'button', class: 'secondary' }, 'Close');
    dialog.replaceChildren(
      h('h2', { id: 'viewer-title' }, alt),
      h('img', { src: url, alt, width: 512, height: 512 }),
      h('div', { class: 'actions' }, close));
    close.addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => from.focus(), { once: true });
    dialog.showModal();
    close.focus();
  }

  function say(s) {
    switch (s.state) {
      case 'connecting':
        return text(line, s.attempt ? `Reconnecting (try ${s.attempt} of ${MAX_ATTEMPTS})…` : 'Connecting…');
      case 'live':
        return text(line, 'Following live.');
      case 'waiting':
        return text(line, `The connection dropped. Trying again in ${Math.ceil(s.ms / 1000)} s (try ${s.attempt} of ${MAX_ATTEMPTS})…`);
      case 'gave_up':
        return text(line, 'Lost contact with Terrace. Showing the last known state; it may have moved on.');
      case 'gone':
        return text(line, 'This generation no longer exists.');
      default:
        return text(line, '');
    }
  }

  async function start() {
    if (following || abort.signal.aborted) return;
    following = true;
    retry.hidden = true;
    const end = await follow(`/v1/generations/${id}/events`, {
      signal: abort.signal,
      onStatus: say,
      isDone: () => last && TERMINAL.has(last.status),
      onEvent: (ev) => {
        if (ev.event !== 'generation') return;
        try {
          render(JSON.parse(ev.data));
        } catch {
          // A malformed event: the next one carries the whole state again.
        }
      },
    });
    following = false;
    if (end === 'gave_up') {
      retry.hidden = false;
      announce(ctx.announcer, 'Lost contact with Terrace. Use “Try again to follow” to reconnect.');
    }
  }
  retry.addEventListener('click', () => {
    start();
    cancel.hidden ? title.focus() : cancel.focus();
  });

  cancel.addEventListener('click', async () => {
    if (cancel.disabled) return;
    cancel.disabled = true;
    text(cancelNote, 'Cancelling…');
    try {
      const g = await (await call(`/v1/generations/${id}/cancel`, { method: 'POST', signal: abort.signal })).json();
      render(g);
      text(cancelNote, '');
    } catch (e) {
      if (abort.signal.aborted) return;
      text(cancelNote, e.status === 409 ? 'It had already finished.' : `Could not cancel: ${explain(e.code, e.message)}`);
    } finally {
      cancel.disabled = false;
      if (cancel.hidden) title.focus();
    }
  });

  (async () => {
    try {
      if (last) render(last);
      else render(await getJson(`/v1/generations/${id}`, { signal: abort.signal }));
      if (!TERMINAL.has(last.status)) await start();
    } catch (e) {
      if (abort.signal.aborted) return;
      text(status, e.status === 404 ? 'There is no such generation on your account.' : explain(e.code, e.message));
    }
  })();

  return {
    dispose() {
      abort.abort();
      for (const u of urls) URL.revokeObjectURL(u);
    },
  };
}
