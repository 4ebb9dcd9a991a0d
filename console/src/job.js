// One job: live status, stage, node and chunk bars, elapsed and estimated time left, the engine
// log as it runs, cancel / retry / delete, the result files and the 3D viewer.
import { api, apiUrl, download, follow, getKey } from './api.js';
import { h, bytes, duration, errorText } from './dom.js';
import { Viewer } from './viewer.js';

const LOG_LINES_SHOWN = 2000;

export function jobView(id) {
  const controller = new AbortController();
  let job = null;
  let version = 0;
  let viewer = null;
  let ended = false;

  const statusEl = h('span', { id: 'job-status', class: 'badge', role: 'status' }, '…');
  const stage = h('span', { id: 'job-stage' });
  const overall = h('progress', { id: 'bar-overall', max: 100, value: 0 });
  const overallText = h('span', { id: 'bar-overall-text' });
  const node = h('progress', { id: 'bar-node', max: 1, value: 0 });
  const nodeText = h('span', { id: 'bar-node-text' });
  const chunk = h('progress', { id: 'bar-chunk', max: 1, value: 0 });
  const chunkText = h('span', { id: 'bar-chunk-text' });
  const chunkRow = h('div', { class: 'bar', hidden: true }, h('label', { for: 'bar-chunk' }, 'Chunk'), chunk, chunkText);
  const elapsed = h('dd', { id: 'job-elapsed' }, '—');
  const eta = h('dd', { id: 'job-eta' }, 'unknown');
  const errorBox = h('div', { id: 'job-error', class: 'error', role: 'alert' });
  const actionError = h('p', { class: 'error', id: 'action-error', role: 'alert' });
  const log = h('pre', { id: 'job-log', tabindex: 0, 'aria-label': 'Engine log' });
  const followLog = h('input', { type: 'checkbox', id: 'log-follow', checked: true });
  const results = h('ul', { id: 'results', class: 'results' });
  const archive = h('a', { id: 'archive-link', class: 'button', href: apiUrl(`jobs/${id}/archive`), download: `meshroom-${id}.zip`, hidden: true },
    'Download all (.zip)');
  const viewerBox = h('div', { id: 'viewer', class: 'viewer', hidden: true });
  const viewerNote = h('p', { id: 'viewer-note', class: 'hint' });

  const cancel = h('button', { type: 'button', id: 'btn-cancel' }, 'Cancel');
  const retry = h('button', { type: 'button', id: 'btn-retry', class: 'secondary' }, 'Retry');
  const remove = h('button', { type: 'button', id: 'btn-delete', class: 'danger' }, 'Delete');

  async function act(method, path, after) {
    actionError.textContent = '';
    try {
      await api(path, { method });
      if (after) after();
    } catch (e) {
      actionError.textContent = errorText(e);
    }
  }
  cancel.addEventListener('click', () => act('POST', `jobs/${id}/cancel`));
  retry.addEventListener('click', () => act('POST', `jobs/${id}/retry`, () => window.dispatchEvent(new HashChangeEvent('hashchange'))));
  remove.addEventListener('click', () => {
    if (confirm('Delete this job and its files?')) act('DELETE', `jobs/${id}`, () => (location.hash = '#/jobs'));
  });
  archive.addEventListener('click', (e) => {
    if (!getKey()) return; // a plain link works
    e.preventDefault();
    download(`jobs/${id}/archive`, `meshroom-${id}.zip`).catch((err) => (actionError.textContent = errorText(err)));
  });

  function show(j) {
    job = j;
    statusEl.textContent = j.status;
    statusEl.className = `badge ${j.status}`;
    stage.textContent = j.stage ? `· ${j.stage}` : '';
    const p = j.progress || {};
    overall.value = p.percent || 0;
    overallText.textContent = `${Math.round(p.percent || 0)}%`;
    node.max = p.node_count || 1;
    node.value = p.node_index ? p.node_index - (j.status === 'succeeded' ? 0 : 1) : 0;
    nodeText.textContent = p.node_index ? `${p.node_index}/${p.node_count} ${p.node || ''}` : '';
    chunkRow.hidden = !p.chunk_count;
    if (p.chunk_count) {
      chunk.max = p.chunk_count;
      chunk.value = p.chunk_index - 1;
      chunkText.textContent = `${p.chunk_index}/${p.chunk_count}`;
    }
    const running = j.status === 'enqueued' || j.status === 'processing';
    cancel.disabled = !running || j.cancel_requested;
    retry.disabled = !(j.status === 'failed' || j.status === 'canceled');
    remove.disabled = j.status === 'processing';
    errorBox.textContent = j.error ? `${j.error.message} (${j.error.code})` : '';
    if (!running) eta.textContent = j.status === 'succeeded' ? 'done' : '—';
    tick();
    if (j.status === 'succeeded') showResults(j);
  }

  function tick() {
    if (!job || !job.started_at) return;
    const end = job.finished_at ? new Date(job.finished_at) : new Date();
    elapsed.textContent = duration((end - new Date(job.started_at)) / 1000);
  }
  const clock = setInterval(tick, 1000);

  const running = () => job && (job.status === 'enqueued' || job.status === 'processing');
  async function estimate() {
    if (!running()) return;
    try {
      const e = await api(`jobs/${id}/estimate`);
      // The job may have ended while the estimate was on its way: "done" stays.
      if (!running()) return;
      eta.textContent = e.remaining_secs === null ? 'unknown' : `${duration(e.remaining_secs)} (from ${e.based_on} earlier jobs)`;
    } catch (_) {
      /* the next tick tries again */
    }
  }
  const estimates = setInterval(estimate, 5000);

  let shown = false;
  function showResults(j) {
    if (shown) return;
    shown = true;
    results.replaceChildren(
      ...j.results.map((r) => {
        const b = h('button', { type: 'button', class: 'secondary small', 'data-file': r.name }, 'Download');
        b.addEventListener('click', () =>
          download(`jobs/${id}/files/${encodeURIComponent(r.name)}`, r.name).catch((e) => (actionError.textContent = errorText(e))));
        return h('li', {}, h('span', { class: 'name' }, r.name), h('span', { class: 'size' }, bytes(r.size)), b);
      }),
    );
    archive.hidden = j.results.length === 0;
    viewerBox.hidden = false;
    viewer = new Viewer(viewerBox, viewerNote);
    viewer.load(id, j.results).catch((e) => (viewerNote.textContent = `The model cannot be shown: ${errorText(e)}`));
  }

  function addLog(line) {
    log.append(line + '\n');
    while (log.childNodes.length > LOG_LINES_SHOWN) log.firstChild.remove();
    if (followLog.checked) log.scrollTop = log.scrollHeight;
  }

  follow(`jobs/${id}/events?log=true`, {
    job(data) {
      if (data.version <= version) return;
      version = data.version;
      show(data.job);
      estimate();
    },
    log(data) {
      addLog(data.line);
    },
    end() {
      ended = true;
      controller.abort();
    },
    deleted() {
      ended = true;
      statusEl.textContent = 'deleted';
      controller.abort();
    },
    closed: () => ended,
    failed(e) {
      errorBox.textContent = errorText(e);
    },
  }, controller.signal);

  const el = h('section', { class: 'job' },
    h('h1', {}, 'Job ', h('code', {}, id)),
    h('p', {}, statusEl, ' ', stage),
    h('div', { class: 'bars' },
      h('div', { class: 'bar' }, h('label', { for: 'bar-overall' }, 'Overall'), overall, overallText),
      h('div', { class: 'bar' }, h('label', { for: 'bar-node' }, 'Node'), node, nodeText),
      chunkRow),
    h('dl', { class: 'times' }, h('dt', {}, 'Elapsed'), elapsed, h('dt', {}, 'Time left'), eta),
    errorBox,
    h('div', { class: 'actions' }, cancel, retry, remove),
    actionError,
    h('h2', {}, 'Result'), viewerNote, viewerBox, results, archive,
    h('h2', {}, 'Engine log'),
    h('p', {}, followLog, h('label', { for: 'log-follow' }, ' Follow the end')),
    log);
  return {
    el,
    title: `Job ${id.slice(0, 8)}`,
    leave() {
      controller.abort();
      clearInterval(clock);
      clearInterval(estimates);
      if (viewer) viewer.dispose();
    },
  };
}
