// The console: a hash router over three views (new job, jobs, one job) and the key dialog.
import { api, getKey, setKey, onAuthNeeded } from './api.js';
import { h, errorText } from './dom.js';
import { submitView } from './submit.js';
import { listView } from './list.js';
import { jobView } from './job.js';

const main = document.getElementById('main');
// The view shown; its cleanup (closing streams, freeing the viewer) runs when another replaces it.
let leave = null;

function route() {
  if (leave) leave();
  leave = null;
  main.replaceChildren();
  const path = location.hash.replace(/^#/, '') || '/';
  const job = path.match(/^\/jobs\/([0-9a-f-]{36})$/);
  for (const a of document.querySelectorAll('nav a')) a.removeAttribute('aria-current');
  let view;
  if (job) {
    view = jobView(job[1]);
  } else if (path.startsWith('/jobs')) {
    document.getElementById('nav-jobs').setAttribute('aria-current', 'page');
    view = listView(new URLSearchParams(path.split('?')[1] || ''));
  } else {
    document.getElementById('nav-submit').setAttribute('aria-current', 'page');
    view = submitView();
  }
  main.append(view.el);
  leave = view.leave || null;
  document.title = `${view.title} · meshroom-svc`;
}

// The key dialog: opened by the header button, and by any 401.
const dialog = document.getElementById('key-dialog');
const input = document.getElementById('key-input');
function askKey(reason) {
  if (dialog.open) return;
  document.getElementById('key-reason').textContent =
    (reason ? `${reason}. ` : '') + 'The key is kept in this tab only (sessionStorage).';
  input.value = getKey();
  dialog.showModal();
  input.focus();
}
onAuthNeeded((reason) => askKey(reason || 'This service needs an API key'));
document.getElementById('key-button').addEventListener('click', () => askKey(''));
document.getElementById('key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  setKey(input.value.trim());
  dialog.close();
  route();
});
document.getElementById('key-forget').addEventListener('click', () => {
  setKey('');
  dialog.close();
  route();
});
document.getElementById('key-cancel').addEventListener('click', () => dialog.close());

window.addEventListener('hashchange', route);
route();

// Whether keys are needed shows at the first call; the footer says which service this is.
api('../../')
  .then((info) => {
    const footer = document.querySelector('footer.bottom');
    footer.prepend(h('span', {}, `${info.name} ${info.version} · `));
  })
  .catch((e) => console.warn(errorText(e)));
