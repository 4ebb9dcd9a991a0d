// The HTTP API as the console uses it: every call carries the key kept in sessionStorage, every
// failure becomes an ApiError with the API's {code, message, field}.
import { fetchEventSource } from '@microsoft/fetch-event-source';

// The page is served at <prefix>/console/; the API is at <prefix>/api/v1/, whatever the prefix.
const base = new URL('../api/v1/', location.href);
const STORE = 'meshroom-svc.key';

export function apiUrl(path) {
  return new URL(path.replace(/^\//, ''), base).toString();
}

export function getKey() {
  return sessionStorage.getItem(STORE) || '';
}

export function setKey(key) {
  if (key) sessionStorage.setItem(STORE, key);
  else sessionStorage.removeItem(STORE);
}

function authHeaders() {
  const key = getKey();
  if (!key) return {};
  // Keys go in X-API-Key; a JWT (three dot-separated parts) as a bearer token.
  return key.split('.').length === 3 && !key.startsWith('msk_')
    ? { Authorization: `Bearer ${key}` }
    : { 'X-API-Key': key };
}

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

// Called when the API answers 401: the app asks for a key.
let onAuth = () => {};
export function onAuthNeeded(f) {
  onAuth = f;
}

function toError(status, body) {
  const e = (body && body.error) || {};
  if (status === 401) onAuth(e.message);
  return new ApiError(status, e.code || `http_${status}`, e.message || `HTTP ${status}`, e.field);
}

export async function api(path, { method = 'GET', json } = {}) {
  const headers = authHeaders();
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  let r;
  try {
    r = await fetch(apiUrl(path), { method, headers, body });
  } catch (e) {
    throw new ApiError(0, 'network', `the service cannot be reached (${e.message})`);
  }
  if (r.status === 204) return null;
  const type = r.headers.get('content-type') || '';
  const data = type.includes('json') ? await r.json().catch(() => null) : await r.text();
  if (!r.ok) throw toError(r.status, data);
  return data;
}

// Submits a multipart form with upload progress: onProgress(loadedBytes, totalBytes, bytesPerSecond).
export function upload(form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', apiUrl('jobs'));
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    // A retried submit (after a network error) must not make a second job.
    xhr.setRequestHeader('Idempotency-Key', crypto.randomUUID());
    const started = performance.now();
    xhr.upload.onprogress = (e) => {
      const secs = Math.max((performance.now() - started) / 1000, 0.001);
      onProgress(e.loaded, e.total, e.loaded / secs);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (_) {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(toError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, 'network', 'the upload was interrupted'));
    xhr.send(form);
  });
}

class Retry extends Error {}

// Follows a Server-Sent Events route until `signal` aborts: handlers[event](data, id). Reconnects
// after a drop with Last-Event-ID, so no event is lost.
export function follow(path, handlers, signal) {
  return fetchEventSource(apiUrl(path), {
    headers: authHeaders(),
    signal,
    openWhenHidden: true,
    async onopen(r) {
      if (r.ok) return;
      const body = await r.json().catch(() => null);
      throw toError(r.status, body);
    },
    onmessage(ev) {
      const handler = handlers[ev.event];
      if (handler) handler(ev.data ? JSON.parse(ev.data) : null, ev.id);
    },
    onclose() {
      if (handlers.closed && handlers.closed()) return;
      throw new Retry();
    },
    onerror(e) {
      if (e instanceof ApiError) throw e;
      return 2000;
    },
  }).catch((e) => {
    if (e instanceof ApiError && handlers.failed) handlers.failed(e);
  });
}

// Saves a result: a plain link when the API is open, else fetched with the key and saved as a blob.
export async function download(path, name) {
  const a = document.createElement('a');
  a.download = name;
  if (!getKey()) {
    a.href = apiUrl(path);
    a.click();
    return;
  }
  const r = await fetch(apiUrl(path + (path.includes('?') ? '&' : '?') + 'redirect=false'), { headers: authHeaders() });
  if (!r.ok) throw toError(r.status, await r.json().catch(() => null));
  const url = URL.createObjectURL(await r.blob());
  a.href = url;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// A result file's bytes, for the viewer.
export async function fetchFile(jobId, name) {
  const path = `jobs/${jobId}/files/${encodeURIComponent(name)}?redirect=false`;
  const r = await fetch(apiUrl(path), { headers: authHeaders() });
  if (!r.ok) throw toError(r.status, await r.json().catch(() => null));
  return r;
}
