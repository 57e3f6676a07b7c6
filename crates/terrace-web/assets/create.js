// The create form: an address and one to five areas, each with a style, an
// optional note and how much of today's garden to keep. The cost and the
// balance are shown before submitting; the API's validation messages appear
// beside the fields they name; one submission is in flight at a time, under
// one Idempotency-Key.

import { ApiError, call, getJson } from './api.js';
import { AREAS, FIELDS, MAX_AREAS, MAX_PROMPT, STYLES, explain, plural, strengthWords } from './words.js';
import { announce, h, heading, newKey, text, uid } from './dom.js';

function errorSlot(id) {
  return h('p', { id, class: 'field-error', hidden: true });
}

function setError(control, slot, message) {
  slot.hidden = !message;
  text(slot, message ? message : '');
  if (message) control.setAttribute('aria-invalid', 'true');
  else control.removeAttribute('aria-invalid');
}

// One area of the form: its controls and their error slots.
function areaRow(initial) {
  const id = uid('area');
  const legend = h('legend', null, 'Area');
  const kind = h('select', { id: `${id}-area`, name: 'area', 'aria-describedby': `${id}-area-error` },
    AREAS.map((a) => h('option', { value: a.id }, a.name)));
  kind.value = initial.area;
  const style = h('select', { id: `${id}-style`, name: 'style', 'aria-describedby': `${id}-style-word ${id}-style-error` },
    STYLES.map((s) => h('option', { value: s.id }, s.name)));
  style.value = initial.style;
  const styleWord = h('p', { id: `${id}-style-word`, class: 'hint' });
  const showWord = () => text(styleWord, STYLES.find((s) => s.id === style.value)?.word ?? '');
  style.addEventListener('change', showWord);
  showWord();

  const note = h('textarea', {
    id: `${id}-prompt`, name: 'custom_prompt', rows: 2, maxlength: MAX_PROMPT,
    'aria-describedby': `${id}-prompt-count ${id}-prompt-error`,
  });
  const count = h('p', { id: `${id}-prompt-count`, class: 'hint' });
  const showCount = () => text(count, `${note.value.length} of ${MAX_PROMPT} characters`);
  note.addEventListener('input', showCount);
  showCount();

  const strength = h('input', {
    id: `${id}-strength`, name: 'preservation_strength', type: 'range', min: 0, max: 1, step: 0.05, value: '0.5',
    'aria-describedby': `${id}-strength-words ${id}-strength-error`,
  });
  const strengthOut = h('output', { id: `${id}-strength-words`, for: `${id}-strength`, class: 'hint' });
  const showStrength = () => {
    const v = Number(strength.value);
    text(strengthOut, `${Math.round(v * 100)}%: ${strengthWords(v)}`);
    strength.setAttribute('aria-valuetext', `${Math.round(v * 100)} percent: ${strengthWords(v)}`);
  };
  strength.addEventListener('input', showStrength);
  showStrength();

  const remove = h('button', { type: 'button', class: 'link-button' }, 'Remove this area');
  const errors = {
    row: errorSlot(`${id}-error`),
    area: errorSlot(`${id}-area-error`),
    style: errorSlot(`${id}-style-error`),
    custom_prompt: errorSlot(`${id}-prompt-error`),
    preservation_strength: errorSlot(`${id}-strength-error`),
  };
  const el = h('fieldset', { class: 'area-row' },
    legend,
    errors.row,
    h('div', { class: 'row-grid' },
      h('div', { class: 'field' }, h('label', { for: kind.id }, 'Part of the property'), kind, errors.area),
      h('div', { class: 'field' }, h('label', { for: style.id }, 'Style'), style, styleWord, errors.style)),
    h('div', { class: 'field' },
      h('label', { for: note.id }, 'Anything to add? ', h('span', { class: 'optional' }, '(optional)')),
      note, count, errors.custom_prompt),
    h('div', { class: 'field' },
      h('label', { for: strength.id }, 'How much of today’s garden to keep'),
      strength, strengthOut, errors.preservation_strength),
    remove);
  const controls = { area: kind, style, custom_prompt: note, preservation_strength: strength, row: kind };
  return {
    el, legend, kind, remove,
    value() {
      const v = { area: kind.value, style: style.value, preservation_strength: Number(strength.value) };
      const n = note.value.replace(/\s+/g, ' ').trim();
      if (n) v.custom_prompt = n;
      return v;
    },
    showError(field, message) {
      const slot = errors[field] ?? errors.row;
      setError(controls[field] ?? kind, slot, message);
      return controls[field] ?? kind;
    },
    clearErrors() {
      for (const [field, slot] of Object.entries(errors)) setError(controls[field], slot, '');
    },
  };
}

export function createView(main, ctx) {
  const abort = new AbortController();
  let account = null;
  let busy = false;

  const address = h('input', {
    id: 'address', name: 'address', type: 'text', autocomplete: 'street-address', maxlength: 200,
    'aria-describedby': 'address-hint address-error', required: true,
  });
  const addressError = errorSlot('address-error');
  const rowsEl = h('div', { class: 'area-rows' });
  const areasError = errorSlot('areas-error');
  const addButton = h('button', { type: 'button', class: 'secondary' }, 'Add another area');
  const cost = h('p', { id: 'cost', class: 'cost', 'aria-live': 'polite' });
  const summary = h('div', { class: 'form-problems', role: 'alert', tabindex: '-1', hidden: true });
  const submit = h('button', { type: 'submit', class: 'primary', 'aria-describedby': 'cost' }, 'Create designs');
  const waiting = h('p', { class: 'hint', role: 'status' });
  const rows = [];

  const used = () => new Set(rows.map((r) => r.kind.value));
  function refresh() {
    rows.forEach((r, i) => {
      text(r.legend, `Area ${i + 1} of ${rows.length}`);
      const others = new Set(rows.filter((o) => o !== r).map((o) => o.kind.value));
      for (const opt of r.kind.options) opt.disabled = others.has(opt.value);
      r.remove.hidden = rows.length === 1;
    });
    addButton.hidden = rows.length >= MAX_AREAS;
    showCost();
  }
  function addRow(focus) {
    const taken = used();
    const area = AREAS.find((a) => !taken.has(a.id))?.id ?? AREAS[0].id;
    const row = areaRow({ area, style: STYLES[rows.length % STYLES.length].id });
    row.kind.addEventListener('change', refresh);
    row.remove.addEventListener('click', () => {
      const i = rows.indexOf(row);
      rows.splice(i, 1);
      row.el.remove();
      refresh();
      announce(ctx.announcer, `Area removed. ${plural(rows.length, 'area')} left.`);
      (rows[Math.min(i, rows.length - 1)]?.kind ?? addButton).focus();
    });
    rows.push(row);
    rowsEl.append(row.el);
    refresh();
    if (focus) {
      row.kind.focus();
      announce(ctx.announcer, `Area ${rows.length} added.`);
    }
  }
  addButton.addEventListener('click', () => addRow(true));

  function showCost() {
    const n = rows.length;
    const parts = [`This costs ${plural(n, 'credit')}, one per area.`];
    if (account) {
      const available = account.trial_credits + account.token_balance;
      const sub = account.subscription;
      if (sub && sub.status === 'active') parts.push('Your subscription covers it.');
      else {
        parts.push(`You have ${plural(available, 'credit')}` +
          ` (${account.trial_credits} trial, ${account.token_balance} bought${account.held ? `, ${account.held} more held by designs in progress` : ''}).`);
        if (available < n) parts.push('That is not enough: remove an area or buy credits on your Account page.');
      }
    }
    text(cost, parts.join(' '));
  }

  function clearErrors() {
    setError(address, addressError, '');
    setError(rowsEl, areasError, '');
    rows.forEach((r) => r.clearErrors());
    summary.hidden = true;
    summary.replaceChildren();
  }

  // The API's errors[] beside their fields; returns the first control named.
  function showErrors(errors) {
    let first = null;
    const rest = [];
    for (const { field, message } of errors) {
      const m = /^areas\[(\d+)\](?:\.(\w+))?$/.exec(field);
      let control = null;
      if (field === 'address') {
        setError(address, addressError, `${FIELDS.address} ${message}.`);
        control = address;
      } else if (m && rows[Number(m[1])]) {
        const name = m[2] ? FIELDS[m[2]] ?? m[2] : 'This area';
        control = rows[Number(m[1])].showError(m[2] ?? 'row', `${name} ${message}.`);
      } else if (field === 'areas') {
        setError(rowsEl, areasError, `${FIELDS.areas} ${message}.`);
        control = rows[0]?.kind;
      } else rest.push(`${field}: ${message}`);
      first ??= control;
    }
    return { first, rest };
  }

  function showProblems(lines) {
    summary.replaceChildren(...lines.map((l) => h('p', null, l)));
    summary.hidden = false;
  }

  async function onSubmit(e) {
    e.preventDefault();
    if (busy) return;
    busy = true;
    clearErrors();
    submit.disabled = true;
    form.setAttribute('aria-busy', 'true');
    text(submit, 'Creating…');
    const key = newKey();
    const body = { address: address.value.trim(), areas: rows.map((r) => r.value()) };
    performance.clearMarks('terrace:first-progress');
    performance.mark('terrace:submit');
    try {
      const res = await call('/v1/generations', {
        method: 'POST', body, key, signal: abort.signal,
        onWait: (ms, err) => text(waiting, `${explain(err.code)} Trying again in ${Math.ceil(ms / 1000)} s…`),
      });
      const generation = await res.json();
      ctx.navigate(`/app/generations/${generation.id}`, { generation });
      return;
    } catch (err) {
      if (abort.signal.aborted) return;
      text(waiting, '');
      if (err instanceof ApiError && err.errors.length) {
        const { first, rest } = showErrors(err.errors);
        const n = err.errors.length;
        showProblems([`Please fix ${plural(n, 'problem')} below before creating your designs.`, ...rest]);
        (first ?? summary).focus();
      } else {
        showProblems([explain(err.code, err.message)]);
        summary.focus();
      }
    } finally {
      busy = false;
      submit.disabled = false;
      form.removeAttribute('aria-busy');
      text(submit, 'Create designs');
    }
  }

  const form = h('form', { class: 'create', novalidate: true, onsubmit: onSubmit },
    summary,
    h('div', { class: 'field' },
      h('label', { for: 'address' }, 'Street address'),
      h('p', { id: 'address-hint', class: 'hint' }, 'The whole address, with the town, like 1600 Amphitheatre Parkway, Mountain View, CA.'),
      address, addressError),
    h('fieldset', { class: 'areas', 'aria-describedby': 'areas-hint areas-error' },
      h('legend', null, 'Areas to redesign'),
      h('p', { id: 'areas-hint', class: 'hint' }, `One to ${MAX_AREAS} parts of the property, each in its own style.`),
      areasError, rowsEl, addButton),
    cost,
    h('div', { class: 'actions' }, submit),
    waiting);

  addRow(false);
  main.append(heading('Design your garden'),
    h('p', { class: 'lead' }, 'Give the address of a property and the parts to redesign: Terrace draws each one in the style you pick, from pictures of the property itself.'),
    form);
  ctx.focusTitle();

  getJson('/v1/account', { signal: abort.signal })
    .then((a) => {
      account = a;
      showCost();
    })
    .catch(() => {});

  return { dispose: () => abort.abort() };
}
