// Every word the page shows for a value of the API: areas, styles, stages,
// statuses and error codes, in the language of a gardener.

export const AREAS = [
  { id: 'front_yard', name: 'Front yard' },
  { id: 'backyard', name: 'Backyard' },
  { id: 'walkway', name: 'Walkway' },
  { id: 'side_yard', name: 'Side yard' },
  { id: 'patio', name: 'Patio' },
  { id: 'pool_area', name: 'Pool area' },
];

export const STYLES = [
  { id: 'modern_minimalist', name: 'Modern minimalist', word: 'Clean lines, large pavers, ornamental grasses and a calm, restrained palette.' },
  { id: 'california_native', name: 'California native', word: 'Drought-tolerant natives such as manzanita and sage, gravel paths and boulders.' },
  { id: 'japanese_zen', name: 'Japanese zen', word: 'Raked gravel, moss, maples, stone lanterns and carefully placed rocks.' },
  { id: 'english_garden', name: 'English garden', word: 'Full borders of roses, lavender and foxgloves, a neat lawn and brick paths.' },
  { id: 'desert_landscape', name: 'Desert landscape', word: 'Agaves, cacti and yuccas in gravel, sculptural rocks and very little water.' },
  { id: 'mediterranean', name: 'Mediterranean', word: 'Olive trees, terracotta pots, rosemary and warm stone with a shaded seat.' },
  { id: 'tropical_resort', name: 'Tropical resort', word: 'Palms, banana and bird-of-paradise plants, lush layers and natural stone.' },
];

export const MAX_AREAS = 5;
export const MAX_PROMPT = 500;

export const areaName = (id) => AREAS.find((a) => a.id === id)?.name ?? id;
export const styleName = (id) => STYLES.find((s) => s.id === id)?.name ?? id;

export const STAGES = {
  queued: 'Waiting to start',
  retrieving_imagery: 'Fetching pictures of the property',
  generating_design: 'Drawing the design',
  storing: 'Saving the design',
  done: 'Done',
};

export const STATUSES = {
  pending: 'Waiting to start',
  processing: 'In progress',
  completed: 'Ready',
  partially_completed: 'Partly ready',
  failed: 'Failed',
  cancelled: 'Cancelled',
};

export const TERMINAL = new Set(['completed', 'partially_completed', 'failed', 'cancelled']);

const ERRORS = {
  address_not_found: 'We could not find that address. Check the street, number and town, then try again.',
  imagery_unavailable: 'There are no street or aerial pictures of this property that we can draw on.',
  upstream_timeout: 'The map or design service took too long to answer.',
  upstream_unavailable: 'The map or design service is not available right now. Try again in a few minutes.',
  upstream_rejected: 'The map or design service turned the request down.',
  content_blocked: 'The design service declined to draw this one. Try wording your note differently.',
  no_image: 'The design service answered without a picture.',
  deadline_exceeded: 'This took longer than the time allowed, so it was stopped.',
  cancelled: 'Cancelled.',
  internal: 'Something went wrong on our side.',
  insufficient_credits: 'You do not have enough credits for this many areas. Remove an area, or buy credits on your Account page.',
  account_busy: 'Your account is busy with another request.',
  too_many_requests: 'You have a lot going on at once. Wait a moment and try again.',
  overloaded: 'Terrace is very busy right now. Try again shortly.',
  timeout: 'Terrace took too long to answer. Try again shortly.',
  store_unavailable: 'Terrace cannot reach its records right now. Try again shortly.',
  store_timeout: 'Terrace cannot reach its records right now. Try again shortly.',
  blob_store_unavailable: 'Terrace cannot reach its picture store right now. Try again shortly.',
  idempotency_key_reused: 'That request was already sent with different details. Submit the form again.',
  validation_failed: 'Some details need fixing.',
  not_found: 'We could not find that.',
  unauthorized: 'Your session has ended. Please sign in again.',
  forbidden: 'You are not allowed to do that.',
  payload_too_large: 'That is more text than Terrace accepts.',
  already_subscribed: 'You already have an active subscription.',
  billing_unavailable: 'Payments are not available on this server right now.',
  network: 'Terrace could not be reached. Check your connection and try again.',
};

// What an error code means, in words; falls back to the server's own message.
export function explain(code, message) {
  return ERRORS[code] ?? message ?? 'Something went wrong.';
}

// A field of the create request, as the form names it.
export const FIELDS = {
  address: 'The address',
  area: 'The part of the property',
  style: 'The style',
  custom_prompt: 'Your note',
  preservation_strength: 'How much to keep',
  areas: 'The areas',
};

export function strengthWords(v) {
  if (v >= 0.75) return 'keep today’s layout and large trees; change planting and surfaces only';
  if (v >= 0.4) return 'keep the house, paving footprint and large trees; redesign the rest';
  return 'keep only the house; redesign everything else';
}

export function money(cents, currency = 'usd') {
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency: currency.toUpperCase() }).format(cents / 100);
  } catch {
    return `${(cents / 100).toFixed(2)} ${currency.toUpperCase()}`;
  }
}

export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
