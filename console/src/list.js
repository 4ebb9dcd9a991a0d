// Jobs: a filtered, paged list whose rows follow the live events of every job.
import { api, follow } from './api.js';
import { h, when, errorText } from './dom.js';

const STATUSES = ['enqueued', 'processing', 'succeeded', 'failed', 'canceled'];

function row(job) {
  const p = job.progress || {};
  const pct = Math.round(p.percent || 0);
  return h('tr', { 'data-id': job.id, 'data-status': job.status },
    h('td', {}, h('a', { href: `#/jobs/${job.id}` }, job.id.slice(0, 8) + '…')),
    h('td', {}, h('span', { class: `badge ${job.status}` }, job.status)),
    h('td', {}, h('progress', { max: 100, value: pct, 'aria-label': `Progress of ${job.id}` }), ` ${pct}%`),
    h('td', {}, job.pipeline),
    h('td', {}, String((job.image_urls || []).length + (job.uploads || []).length)),
    h('td', {}, when(job.created_at)));
}

export function listView(query) {
  const controller = new AbortController();
  const status = h('select', { id: 'filter-status' }, h('option', { value: '' }, 'any'),
    STATUSES.map((s) => h('option', { value: s, selected: query.get('status') === s }, s)));
  const pipeline = h('input', { id: 'filter-pipeline', value: query.get('pipeline') || '', placeholder: 'any' });
  const body = h('tbody', { id: 'jobs-body' });
  const more = h('button', { type: 'button', id: 'jobs-more', class: 'secondary', hidden: true }, 'Older jobs');
  const error = h('p', { class: 'error', role: 'alert' });
  const versions = new Map();
  let cursor = null;

  async function page() {
    const q = new URLSearchParams({ limit: '20' });
    if (status.value) q.set('status', status.value);
    if (pipeline.value.trim()) q.set('pipeline', pipeline.value.trim());
    if (cursor) q.set('after', cursor);
    try {
      const res = await api(`jobs?${q}`);
      for (const job of res.jobs) {
        if (!body.querySelector(`tr[data-id="${job.id}"]`)) body.append(row(job));
      }
      cursor = res.next_cursor || null;
      more.hidden = !cursor;
      error.textContent = res.jobs.length || body.children.length ? '' : 'No jobs match.';
    } catch (e) {
      error.textContent = errorText(e);
    }
  }

  const matches = (job) =>
    (!status.value || job.status === status.value) && (!pipeline.value.trim() || job.pipeline === pipeline.value.trim());

  // Live: a changed row is redrawn; a new matching job goes on top.
  follow('events', {
    job(data) {
      const { version, job } = data;
      if ((versions.get(job.id) || 0) >= version) return;
      versions.set(job.id, version);
      const old = body.querySelector(`tr[data-id="${job.id}"]`);
      if (old) {
        if (matches(job)) old.replaceWith(row(job));
        else old.remove();
      } else if (matches(job)) {
        body.prepend(row(job));
      }
    },
  }, controller.signal);

  function apply(e) {
    e.preventDefault();
    const q = new URLSearchParams();
    if (status.value) q.set('status', status.value);
    if (pipeline.value.trim()) q.set('pipeline', pipeline.value.trim());
    location.hash = `#/jobs${q.toString() ? '?' + q : ''}`;
  }
  more.addEventListener('click', page);
  page();
  const el = h('section', {},
    h('h1', {}, 'Jobs'),
    h('form', { class: 'filters', onsubmit: apply },
      h('label', { for: 'filter-status' }, 'Status'), status,
      h('label', { for: 'filter-pipeline' }, 'Preset'), pipeline,
      h('button', { type: 'submit', class: 'secondary' }, 'Filter')),
    h('div', { class: 'table-wrap' },
      h('table', { class: 'jobs' },
        h('thead', {}, h('tr', {}, ['Job', 'Status', 'Progress', 'Preset', 'Photos', 'Created'].map((t) => h('th', { scope: 'col' }, t)))),
        body)),
    error, more);
  return { el, title: 'Jobs', leave: () => controller.abort() };
}
