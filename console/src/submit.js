// New job: drop photos (files or whole folders), see them, choose a preset and its parameters,
// upload with per-file progress; the API's errors are shown next to the file or field concerned.
import { api, upload } from './api.js';
import { h, bytes, errorText } from './dom.js';

const IMAGE = /\.(jpe?g|png|tiff?|exr|heic|webp)$/i;

// Every file below a dropped folder entry (webkitGetAsEntry), recursively.
async function filesOf(entry) {
  if (entry.isFile) return [await new Promise((ok, fail) => entry.file(ok, fail))];
  if (!entry.isDirectory) return [];
  const reader = entry.createReader();
  const all = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) break;
    for (const e of batch) all.push(...(await filesOf(e)));
  }
  return all;
}

export function submitView() {
  const files = []; // {file, row, bar, note}
  const paramsBox = h('div', { class: 'params', id: 'params' });
  const presetNote = h('p', { class: 'hint', id: 'pipeline-note' });
  const presetError = h('p', { class: 'error', id: 'pipeline-error', role: 'alert' });
  const preset = h('select', { id: 'pipeline', name: 'pipeline' });
  let presets = [];
  const metadata = h('textarea', { id: 'metadata', rows: 3, placeholder: '{"project": "statue"}' });
  const metadataError = h('p', { class: 'error', id: 'metadata-error', role: 'alert' });
  const callback = h('input', { id: 'callback_url', type: 'url', placeholder: 'https://example.com/hook' });
  const callbackError = h('p', { class: 'error', id: 'callback_url-error', role: 'alert' });
  const list = h('ul', { class: 'files', id: 'file-list', 'aria-live': 'polite' });
  const summary = h('p', { class: 'hint', id: 'file-summary' }, 'No photos yet.');
  const status = h('p', { id: 'submit-status', role: 'status' });
  const formError = h('p', { class: 'error', id: 'submit-error', role: 'alert' });
  const picker = h('input', { id: 'file-input', type: 'file', multiple: true, accept: 'image/*,.exr,.tif,.tiff' });
  const folder = h('input', { id: 'folder-input', type: 'file', multiple: true, webkitdirectory: true });
  const send = h('button', { type: 'submit', id: 'submit-button' }, 'Start reconstruction');

  function refreshSummary() {
    const total = files.reduce((n, f) => n + f.file.size, 0);
    summary.textContent = files.length ? `${files.length} photos, ${bytes(total)}` : 'No photos yet.';
  }

  function add(list_) {
    const known = new Set(files.map((f) => `${f.file.name}/${f.file.size}`));
    const sorted = [...list_].filter((f) => IMAGE.test(f.name) || f.type.startsWith('image/'));
    sorted.sort((a, b) => (a.webkitRelativePath || a.name).localeCompare(b.webkitRelativePath || b.name));
    for (const file of sorted) {
      if (known.has(`${file.name}/${file.size}`)) continue;
      const thumb = h('img', { class: 'thumb', alt: '', width: 48, height: 48 });
      if (file.type.startsWith('image/') && !/tiff?$/i.test(file.name)) {
        thumb.src = URL.createObjectURL(file);
        thumb.addEventListener('load', () => URL.revokeObjectURL(thumb.src), { once: true });
        thumb.addEventListener('error', () => URL.revokeObjectURL(thumb.src), { once: true });
      }
      const bar = h('progress', { max: 100, value: 0, 'aria-label': `Upload of ${file.name}` });
      const note = h('span', { class: 'note' });
      const remove = h('button', { type: 'button', class: 'secondary small', 'aria-label': `Remove ${file.name}` }, '×');
      const row = h('li', { 'data-name': file.name }, thumb, h('span', { class: 'name' }, file.name),
        h('span', { class: 'size' }, bytes(file.size)), bar, note, remove);
      const entry = { file, row, bar, note };
      remove.addEventListener('click', () => {
        files.splice(files.indexOf(entry), 1);
        row.remove();
        refreshSummary();
      });
      files.push(entry);
      list.append(row);
    }
    refreshSummary();
  }

  picker.addEventListener('change', () => add(picker.files));
  folder.addEventListener('change', () => add(folder.files));
  const zone = h('div', { class: 'drop', id: 'drop-zone', tabindex: 0, role: 'button',
    'aria-label': 'Drop photos or a folder here, or press Enter to choose photos' },
  h('strong', {}, 'Drop photos or a whole folder here'), h('span', {}, ' or choose them:'));
  zone.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      picker.click();
    }
  });
  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', async (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (entries.length) {
      const all = [];
      for (const entry of entries) all.push(...(await filesOf(entry)));
      add(all);
    } else {
      add(e.dataTransfer.files);
    }
  });

  function showParams() {
    const p = presets.find((x) => x.name === preset.value);
    paramsBox.replaceChildren();
    presetNote.textContent = p ? `${p.description} — ${p.engine}${p.gpu ? ', needs a GPU' : ', CPU'}` : '';
    if (!p) return;
    for (const [name, spec] of Object.entries(p.params)) {
      const id = `param-${name}`;
      let input;
      if (spec.type === 'choice') {
        input = h('select', { id, 'data-param': name }, h('option', { value: '' }, '(preset default)'),
          spec.values.map((v) => h('option', { value: v }, v)));
      } else if (spec.type === 'bool') {
        input = h('select', { id, 'data-param': name }, h('option', { value: '' }, '(preset default)'),
          h('option', { value: 'true' }, 'true'), h('option', { value: 'false' }, 'false'));
      } else {
        input = h('input', { id, 'data-param': name, type: 'number', min: spec.min, max: spec.max,
          step: spec.type === 'int' ? 1 : 'any', placeholder: `${spec.min} to ${spec.max}` });
      }
      paramsBox.append(h('div', { class: 'field' }, h('label', { for: id }, name), input,
        h('p', { class: 'error', id: `${id}-error`, role: 'alert' })));
    }
  }
  preset.addEventListener('change', showParams);
  api('pipelines')
    .then((all) => {
      presets = all;
      for (const p of all) {
        preset.append(h('option', { value: p.name, disabled: !p.available, selected: p.default },
          `${p.name}${p.available ? '' : ' (no GPU here)'}`));
      }
      // colmap-sparse runs anywhere; otherwise the service's default.
      showParams();
    })
    .catch((e) => (presetError.textContent = errorText(e)));

  function clearErrors() {
    for (const el of form.querySelectorAll('.error')) el.textContent = '';
    for (const f of files) {
      f.note.textContent = '';
      f.row.classList.remove('bad');
    }
  }

  // Puts the API's error next to what it concerns (error.field), else under the form.
  function place(e) {
    const field = e.field || '';
    if (field.startsWith('images/')) {
      const bad = files.find((f) => f.file.name === field.slice(7));
      if (bad) {
        bad.row.classList.add('bad');
        bad.note.textContent = errorText(e);
        bad.note.setAttribute('role', 'alert');
        return;
      }
    }
    const target = form.querySelector(`#${CSS.escape(field.replace('params.', 'param-'))}-error`);
    (target || formError).textContent = errorText(e);
  }

  const form = h('form', { id: 'submit-form', novalidate: true },
    h('h1', {}, 'New reconstruction'),
    zone,
    h('div', { class: 'pickers' },
      h('label', { for: 'file-input' }, 'Photos'), picker,
      h('label', { for: 'folder-input' }, 'A folder'), folder),
    summary, list,
    h('div', { class: 'field' }, h('label', { for: 'pipeline' }, 'Preset'), preset, presetNote, presetError),
    paramsBox,
    h('details', {},
      h('summary', {}, 'More options'),
      h('div', { class: 'field' }, h('label', { for: 'metadata' }, 'Metadata (JSON, returned as is)'), metadata, metadataError),
      h('div', { class: 'field' }, h('label', { for: 'callback_url' }, 'Webhook URL'), callback, callbackError)),
    h('div', { class: 'actions' }, send), status, formError);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors();
    if (!files.length) {
      formError.textContent = 'Add photos first.';
      return;
    }
    const data = new FormData();
    data.append('pipeline', preset.value);
    const params = {};
    for (const el of paramsBox.querySelectorAll('[data-param]')) {
      if (el.value !== '') params[el.dataset.param] = el.value;
    }
    if (Object.keys(params).length) data.append('params', JSON.stringify(params));
    if (metadata.value.trim()) data.append('metadata', metadata.value.trim());
    if (callback.value.trim()) data.append('callback_url', callback.value.trim());
    // Byte ranges of each file in the body, to turn the request's progress into per-file bars.
    let at = 0;
    const spans = files.map((f) => {
      data.append('images', f.file, f.file.name);
      const span = [at, at + f.file.size];
      at += f.file.size;
      return span;
    });
    send.disabled = true;
    status.textContent = 'Uploading…';
    try {
      const job = await upload(data, (loaded, total, rate) => {
        const sent = (loaded / Math.max(total, 1)) * at;
        files.forEach((f, i) => {
          const [a, b] = spans[i];
          f.bar.value = Math.max(0, Math.min(100, ((sent - a) / Math.max(b - a, 1)) * 100));
          if (sent > a && sent < b) f.note.textContent = `${bytes(rate)}/s`;
          else if (sent >= b) f.note.textContent = 'sent';
        });
        status.textContent = `Uploading ${bytes(loaded)} of ${bytes(total)} at ${bytes(rate)}/s`;
      });
      status.textContent = 'Accepted.';
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      status.textContent = '';
      place(err);
    } finally {
      send.disabled = false;
    }
  });
  return { el: form, title: 'New job' };
}
