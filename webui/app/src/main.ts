// The app shell: sign-in, the navigation by role, hash routes.
import './style.css';
import { api, ApiError, Me, setCsrf } from './api';
import { clear, h, notice } from './dom';
import * as pages from './pages';
import { messagePage } from './message';

const root = document.getElementById('app')!;
// kept across pages: "Released" still shows on the list it goes back to
const noticeBox = h('div', { id: 'notice' });
let me: Me | null = null;

type Page = (view: HTMLElement, me: Me, arg: string) => Promise<void>;
interface Route { path: string; title: string; page: Page; roles: string[]; nav: boolean }

const routes: Route[] = [
  { path: 'dashboard', title: 'Dashboard', page: pages.dashboard, roles: ['admin', 'superadmin'], nav: true },
  { path: 'quarantine', title: 'Quarantine', page: pages.quarantine, roles: ['user', 'admin', 'superadmin'], nav: true },
  { path: 'message', title: 'Message', page: messagePage, roles: ['user', 'admin', 'superadmin'], nav: false },
  { path: 'trace', title: 'Trace', page: pages.trace, roles: ['user', 'admin', 'superadmin'], nav: true },
  { path: 'lists', title: 'Lists', page: pages.lists, roles: ['user', 'admin', 'superadmin'], nav: true },
  { path: 'queue', title: 'Queue', page: pages.queue, roles: ['admin', 'superadmin'], nav: true },
  { path: 'nodes', title: 'Nodes', page: pages.nodes, roles: ['superadmin'], nav: true },
  { path: 'domains', title: 'Domains', page: pages.domains, roles: ['admin', 'superadmin'], nav: true },
  { path: 'accounts', title: 'Accounts', page: pages.accounts, roles: ['admin', 'superadmin'], nav: true },
  { path: 'tokens', title: 'API tokens', page: pages.tokens, roles: ['admin', 'superadmin'], nav: true },
  { path: 'settings', title: 'My account', page: pages.settings, roles: ['user', 'admin', 'superadmin'], nav: true },
];

function home(m: Me): string {
  return m.must_enroll ? 'settings' : m.role === 'user' ? 'quarantine' : 'dashboard';
}

function loginView(): void {
  const user = h('input', { id: 'user', name: 'user', type: 'email', autocomplete: 'username', required: true });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const code = h('input', { id: 'totp', name: 'totp', inputmode: 'numeric', autocomplete: 'one-time-code', placeholder: '123456 or a recovery code' });
  const codeRow = h('label', { class: 'hidden', id: 'totp-row' }, 'Code from your authenticator app', code);
  const err = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'login', onsubmit: async (ev: Event) => {
    ev.preventDefault();
    err.textContent = '';
    const body: Record<string, string> = { user: user.value, password: pass.value };
    const c = code.value.trim();
    if (c) body[/^\d{6}$/.test(c) ? 'totp' : 'recovery'] = c;
    try {
      me = await api<Me>('POST', '/login', body);
      setCsrf(me.csrf);
      location.hash = '#/' + home(me);
      render();
    } catch (e) {
      if (e instanceof ApiError && e.code === 'totp_required') {
        codeRow.classList.remove('hidden');
        code.focus();
      }
      err.textContent = e instanceof Error ? e.message : String(e);
    }
  } },
    h('h1', {}, 'Moat'), h('p', { class: 'muted' }, 'Mail gateway: sign in with your mail account.'),
    h('label', {}, 'Address', user), h('label', {}, 'Password', pass), codeRow,
    h('button', { type: 'submit', id: 'signin' }, 'Sign in'), err);
  clear(root, form);
  user.focus();
}

async function render(): Promise<void> {
  if (!me) {
    try {
      me = await api<Me>('GET', '/me');
      setCsrf(me.csrf);
    } catch {
      loginView();
      return;
    }
  }
  const m = me;
  const [path, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const route = routes.find(r => r.path === path && r.roles.includes(m.role));
  if (!route) {
    location.replace('#/' + home(m));
    return;
  }
  const nav = h('nav', {}, h('span', { class: 'brand' }, 'Moat'),
    routes.filter(r => r.nav && r.roles.includes(m.role)).map(r =>
      h('a', { href: '#/' + r.path, class: r === route || (route.path === 'message' && r.path === 'quarantine') ? 'active' : '' }, r.title)),
    h('span', { class: 'who' }, m.user + ' (' + m.role + ')'),
    h('button', { class: 'link', id: 'signout', onclick: async () => {
      await api('POST', '/logout').catch(() => undefined);
      me = null;
      setCsrf('');
      location.hash = '';
      loginView();
    } }, 'Sign out'));
  const view = h('main', { id: 'view' });
  clear(root, nav, noticeBox, view);
  document.title = route.title + ' - Moat';
  try {
    await route.page(view, m, decodeURIComponent(rest.join('/')));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      me = null;
      loginView();
      return;
    }
    notice(e instanceof Error ? e.message : String(e), 'error');
  }
}

window.addEventListener('hashchange', () => { render(); });
render();
