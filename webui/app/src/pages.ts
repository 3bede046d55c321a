// The app's pages but the message view (message.ts). Each fetches what it
// shows from the API and builds it with h(): text, never markup.
import { api, Me } from './api';
import { chart, Stats } from './charts';
import { clear, fmtDate, fmtSize, h, notice } from './dom';

function table(head: string[], rows: Node[][], cls = ''): HTMLTableElement {
  return h('table', { class: cls }, h('thead', {}, h('tr', {}, head.map(x => h('th', {}, x)))),
    h('tbody', {}, rows.length ? rows.map(r => h('tr', {}, r.map(c => h('td', {}, c))))
                               : h('tr', {}, h('td', { colspan: head.length, class: 'muted' }, 'Nothing here.'))));
}

const t = (s: string | number) => document.createTextNode(String(s));

// ---------------------------------------------------------------- dashboard
export async function dashboard(view: HTMLElement, me: Me): Promise<void> {
  const range = h('select', { id: 'range' }, ['24h', '7d', '30d'].map(r => h('option', { value: r }, r)));
  const known = await api<{ domains: { name: string }[] }>('GET', '/domains');
  const dom = h('select', { id: 'domain' }, h('option', { value: '' }, me.role === 'superadmin' ? 'All mail' : 'All my domains'),
    known.domains.map(d => h('option', { value: d.name }, d.name)));
  const charts = h('div', { class: 'charts' });
  const totals = h('div', { class: 'totals' });
  async function load(): Promise<void> {
    const s = await api<Stats>('GET', '/stats', undefined, { range: range.value, domain: dom.value });
    const w = Math.min(900, view.clientWidth - 40);
    clear(charts, chart('Mail flow', s, ['accepted', 'delivered', 'rejected', 'quarantined'], w),
          chart('Threats', s, ['spam', 'virus'], w));
    const sum = (n: string) => (s.series[n] || []).reduce((a, b) => a + b, 0);
    clear(totals, ['accepted', 'delivered', 'quarantined', 'rejected', 'spam', 'virus', 'deferred', 'bounced'].map(n =>
      h('div', { class: 'total', 'data-series': n }, h('b', {}, sum(n)), h('span', {}, n))),
      h('div', { class: 'reasons' }, h('h3', {}, 'Rejected, by reason'),
        table(['reason', 'messages'], Object.entries(s.rejected_by_reason).sort((a, b) => b[1] - a[1]).map(([k, v]) => [t(k), t(v)]))));
  }
  range.addEventListener('change', load);
  dom.addEventListener('change', load);
  clear(view, h('header', {}, h('h1', {}, 'Dashboard'), h('div', { class: 'filters' }, range, dom)), totals, charts);
  await load();
}

// ---------------------------------------------------------------- quarantine
interface QItem { id: string; date: number; sender: string; recipients: string[]; subject: string; reason: string; score: number; size: number }

export async function quarantine(view: HTMLElement): Promise<void> {
  const f = {
    sender: h('input', { name: 'sender', placeholder: 'sender' }),
    recipient: h('input', { name: 'recipient', placeholder: 'recipient' }),
    subject: h('input', { name: 'subject', placeholder: 'subject' }),
    reason: h('select', { name: 'reason' }, ['', 'spam', 'virus', 'attachment', 'spf', 'dkim', 'dmarc', 'blocklist', 'policy'].map(r => h('option', { value: r }, r || 'any reason'))),
    min_score: h('input', { name: 'min_score', type: 'number', step: '0.1', placeholder: 'min score' }),
  };
  let sort = 'date', order = 'desc', page = 1;
  const per = 25;
  const list = h('div', { id: 'qlist' });
  const selected = new Set<string>();
  async function bulk(action: string): Promise<void> {
    if (!selected.size) return notice('Select messages first', 'error');
    const r = await api<{ done: number }>('POST', '/quarantine/bulk', { action, ids: [...selected] });
    notice(r.done + ' of ' + selected.size + ' done (' + action.replace('_', ' ') + ')');
    selected.clear();
    await load();
  }
  async function load(): Promise<void> {
    const r = await api<{ total: number; items: QItem[] }>('GET', '/quarantine', undefined, {
      sender: f.sender.value, recipient: f.recipient.value, subject: f.subject.value, reason: f.reason.value,
      min_score: f.min_score.value, sort, order, page, per_page: per });
    const th = (key: string, label: string) => h('th', { class: 'sortable', onclick: () => {
      order = sort === key && order === 'desc' ? 'asc' : 'desc';
      sort = key;
      load();
    } }, label + (sort === key ? (order === 'desc' ? ' ▾' : ' ▴') : ''));
    const all = h('input', { type: 'checkbox', 'aria-label': 'select all', onchange: (e: Event) => {
      const on = (e.target as HTMLInputElement).checked;
      r.items.forEach(i => on ? selected.add(i.id) : selected.delete(i.id));
      list.querySelectorAll<HTMLInputElement>('input.sel').forEach(c => { c.checked = on; });
    } });
    const rows = r.items.map(i => h('tr', { 'data-id': i.id },
      h('td', {}, h('input', { type: 'checkbox', class: 'sel', 'aria-label': 'select', checked: selected.has(i.id),
        onchange: (e: Event) => (e.target as HTMLInputElement).checked ? selected.add(i.id) : selected.delete(i.id) })),
      h('td', { class: 'date' }, fmtDate(i.date)), h('td', {}, i.sender || '<>'), h('td', {}, i.recipients.join(', ')),
      h('td', {}, h('a', { href: '#/message/' + i.id, class: 'subject' }, i.subject || '(no subject)')),
      h('td', {}, i.reason), h('td', { class: 'num' }, i.score.toFixed(1)), h('td', { class: 'num' }, fmtSize(i.size))));
    const pages = Math.max(1, Math.ceil(r.total / per));
    clear(list,
      h('table', { class: 'grid' }, h('thead', {}, h('tr', {}, h('th', {}, all), th('date', 'Date'), th('sender', 'Sender'),
        h('th', {}, 'Recipients'), th('subject', 'Subject'), h('th', {}, 'Reason'), th('score', 'Score'), th('size', 'Size'))),
        h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No held messages.')))),
      h('div', { class: 'pager' }, h('span', { id: 'qtotal' }, r.total + ' messages'),
        h('button', { disabled: page <= 1, onclick: () => { page--; load(); } }, '‹ Previous'),
        h('span', {}, 'page ' + page + ' of ' + pages),
        h('button', { disabled: page >= pages, onclick: () => { page++; load(); } }, 'Next ›')));
  }
  const search = h('form', { class: 'search', onsubmit: (e: Event) => { e.preventDefault(); page = 1; load(); } },
    f.sender, f.recipient, f.subject, f.reason, f.min_score, h('button', { type: 'submit' }, 'Search'));
  const actions = h('div', { class: 'actions' },
    h('button', { onclick: () => bulk('release') }, 'Release'),
    h('button', { onclick: () => bulk('learn_ham') }, 'Not spam'),
    h('button', { onclick: () => bulk('learn_spam') }, 'Spam'),
    h('button', { class: 'danger', onclick: () => bulk('delete') }, 'Delete'));
  clear(view, h('header', {}, h('h1', {}, 'Quarantine')), search, actions, list);
  await load();
}

// ---------------------------------------------------------------- trace
interface TraceMsg { qid: string; from: string; msgid: string; status: string; first: number; events: { t: number; event: string; to: string[]; reason?: string; detail?: string; client?: string }[] }

export async function trace(view: HTMLElement): Promise<void> {
  const q = h('input', { name: 'q', placeholder: 'sender, recipient, queue id or <message-id>', size: 48 });
  const out = h('div', { id: 'trace' });
  async function load(): Promise<void> {
    const r = await api<{ messages: TraceMsg[] }>('GET', '/trace', undefined, { q: q.value.trim() });
    clear(out, r.messages.length ? r.messages.map(m => h('section', { class: 'trace ' + m.status },
      h('h3', {}, h('span', { class: 'badge ' + m.status }, m.status), ' ', m.qid, ' from ', m.from || '<>'),
      m.msgid ? h('p', { class: 'muted' }, m.msgid) : null,
      h('ol', {}, m.events.map(e => h('li', {}, h('b', {}, e.event), ' ' + fmtDate(e.t) + ' ', e.to.join(', '),
        e.reason ? h('span', { class: 'muted' }, ' (' + e.reason + ')') : null,
        e.detail ? h('div', { class: 'detail' }, e.detail) : null))))) : h('p', { class: 'muted' }, 'No messages found.'));
  }
  clear(view, h('header', {}, h('h1', {}, 'Message trace')),
    h('form', { class: 'search', onsubmit: (e: Event) => { e.preventDefault(); load(); } }, q, h('button', { type: 'submit' }, 'Find')), out);
  await load();
}

// ---------------------------------------------------------------- lists
export async function lists(view: HTMLElement, me: Me): Promise<void> {
  const doms = me.role === 'user' ? [] : (await api<{ domains: { name: string }[] }>('GET', '/domains')).domains.map(d => d.name);
  const scopes = me.role === 'superadmin' ? ['global', ...doms] : me.role === 'admin' ? doms : [me.user];
  const scope = h('select', { id: 'scope' }, scopes.map(s => h('option', { value: s }, s)));
  const custom = h('input', { placeholder: 'or an address of yours', size: 28 });
  const body = h('div', {});
  const cur = () => custom.value.trim() || scope.value;
  async function load(): Promise<void> {
    const r = await api<{ scope: string; allow: string[]; block: string[] }>('GET', '/lists', undefined, { scope: cur() });
    const col = (kind: 'allow' | 'block') => {
      const entry = h('input', { placeholder: 'sender@domain or @domain', name: kind + '-entry' });
      return h('section', { class: 'list ' + kind }, h('h2', {}, kind === 'allow' ? 'Allowed senders' : 'Blocked senders'),
        h('ul', {}, r[kind].map(e => h('li', {}, e, ' ', h('button', { class: 'link', onclick: async () => {
          await api('POST', '/lists/remove', { kind, entry: e, scope: r.scope });
          load();
        } }, 'remove')))),
        h('form', { onsubmit: async (ev: Event) => {
          ev.preventDefault();
          await api('POST', '/lists', { kind, entry: entry.value.trim(), scope: r.scope }).catch(e => notice(e.message, 'error'));
          load();
        } }, entry, h('button', { type: 'submit' }, 'Add')));
    };
    clear(body, col('allow'), col('block'));
  }
  scope.addEventListener('change', () => { custom.value = ''; load(); });
  clear(view, h('header', {}, h('h1', {}, 'Allow and block lists'), h('div', { class: 'filters' }, scope,
    me.role !== 'user' ? h('form', { onsubmit: (e: Event) => { e.preventDefault(); load(); } }, custom) : null)), h('div', { class: 'lists' }, body));
  await load();
}

// ---------------------------------------------------------------- queue
interface QueueItem { id: string; state: string; date: number; sender: string; size: number; attempts: number; next_try: number; recipients: { address: string; done: boolean; last_reply: string }[] }

export async function queue(view: HTMLElement, me: Me): Promise<void> {
  const out = h('div', {});
  async function load(): Promise<void> {
    const r = await api<{ items: QueueItem[]; total: number }>('GET', '/queue');
    clear(out, table(['Queue id', 'State', 'Arrived', 'Sender', 'Recipients', 'Tries', ''], r.items.map(i => [
      t(i.id), t(i.state), t(fmtDate(i.date)), t(i.sender || '<>'),
      h('div', {}, i.recipients.map(x => h('div', {}, x.address + (x.done ? ' (done)' : ''), x.last_reply ? h('div', { class: 'detail' }, x.last_reply) : null))),
      t(i.attempts),
      h('button', { class: 'danger', onclick: async () => { await api('POST', '/queue/' + i.id + '/delete'); notice(i.id + ' deleted'); load(); } }, 'Delete')]), 'grid'));
  }
  clear(view, h('header', {}, h('h1', {}, 'Mail queue'),
    me.role === 'superadmin' ? h('button', { onclick: async () => { await api('POST', '/queue/flush'); notice('Flush requested'); } }, 'Retry all now') : null), out);
  await load();
}

// ---------------------------------------------------------------- nodes
interface ClusterNode { name: string; up: boolean; heartbeat: number; queue: number; quarantine: number; version: string; url: string }

function ago(t: number): string {
  if (!t) return 'never';
  const s = Math.max(0, Math.round(Date.now() / 1000 - t));
  return s < 120 ? s + ' s ago' : s < 7200 ? Math.round(s / 60) + ' min ago' : fmtDate(t);
}

export async function nodes(view: HTMLElement): Promise<void> {
  const out = h('div', { id: 'nodes' });
  const r = await api<{ self: string; nodes: ClusterNode[] }>('GET', '/cluster/nodes');
  clear(out, table(['Node', 'State', 'Last heartbeat', 'Queue', 'Quarantine', 'Version', 'Web address'], r.nodes.map(n => [
    h('span', {}, n.name, n.name === r.self ? h('span', { class: 'muted' }, ' (this node)') : null),
    h('span', { class: 'badge ' + (n.up ? 'ok' : 'bad') }, n.up ? 'up' : 'down'),
    t(ago(n.heartbeat)), t(n.queue), t(n.quarantine), t(n.version), t(n.url)]), 'grid'));
  clear(view, h('header', {}, h('h1', {}, 'Cluster nodes')), out);
}

// ---------------------------------------------------------------- domains
export async function domains(view: HTMLElement): Promise<void> {
  const r = await api<{ domains: { name: string; delivery: string; relay_to: string; users: number; own_policy: boolean }[] }>('GET', '/domains');
  const detail = h('div', { id: 'dns' });
  async function check(d: string): Promise<void> {
    clear(detail, h('p', { class: 'muted' }, 'Checking ' + d + '…'));
    const x = await api<{ records: { type: string; name: string; expected: string; found: string[]; ok: boolean; status: string }[] }>('GET', '/domains/' + encodeURIComponent(d) + '/dns');
    clear(detail, h('h2', {}, 'DNS records of ' + d), table(['', 'Type', 'Name', 'Needed', 'Found'], x.records.map(rec => [
      h('span', { class: 'badge ' + (rec.ok ? 'ok' : 'bad') }, rec.ok ? 'ok' : rec.status), t(rec.type), t(rec.name), h('code', {}, rec.expected),
      h('div', {}, rec.found.map(f => h('code', { class: 'block' }, f)))]), 'grid'));
  }
  clear(view, h('header', {}, h('h1', {}, 'Domains')), table(['Domain', 'Delivery', 'Users', 'Own policy', ''], r.domains.map(d => [
    t(d.name), t(d.delivery + (d.relay_to ? ' to ' + d.relay_to : '')), t(d.users), t(d.own_policy ? 'yes' : 'no'),
    h('button', { onclick: () => check(d.name) }, 'Check DNS')]), 'grid'), detail);
}

// ---------------------------------------------------------------- accounts
export async function accounts(view: HTMLElement, me: Me): Promise<void> {
  const out = h('div', {});
  async function load(): Promise<void> {
    const r = await api<{ accounts: { address: string; role: string; quota: number; totp: boolean; forward: string[] }[] }>('GET', '/accounts');
    clear(out, table(['Address', 'Role', 'Quota', 'Two-factor', ''], r.accounts.map(a => [
      t(a.address), t(a.role), t(a.quota ? fmtSize(a.quota) : 'none'), t(a.totp ? 'on' : 'off'),
      a.address === me.user ? t('') : h('span', {},
        h('button', { onclick: async () => {
          const pw = window.prompt('New password for ' + a.address + ' (8 characters or more)');
          if (pw) await api('POST', '/accounts/' + encodeURIComponent(a.address) + '/password', { password: pw }).then(() => notice('Password set'), e => notice(e.message, 'error'));
        } }, 'Set password'), ' ',
        h('button', { class: 'danger', onclick: async () => {
          if (!window.confirm('Remove ' + a.address + '?')) return;
          await api('DELETE', '/accounts/' + encodeURIComponent(a.address)).catch(e => notice(e.message, 'error'));
          load();
        } }, 'Remove'))]), 'grid'));
  }
  const addr = h('input', { name: 'address', placeholder: 'user@' + (me.domains[0] || 'example.com') });
  const pw = h('input', { name: 'password', type: 'password', placeholder: 'password', autocomplete: 'new-password' });
  const role = h('select', { name: 'role' }, h('option', { value: 'user' }, 'user'),
    me.role === 'superadmin' ? [h('option', { value: 'admin' }, 'domain admin'), h('option', { value: 'superadmin' }, 'superadmin')] : null);
  const form = h('form', { class: 'search', onsubmit: async (e: Event) => {
    e.preventDefault();
    await api('POST', '/accounts', { address: addr.value.trim(), password: pw.value, role: role.value })
      .then(() => { notice(addr.value + ' created'); addr.value = ''; pw.value = ''; load(); }, err => notice(err.message, 'error'));
  } }, addr, pw, role, h('button', { type: 'submit' }, 'Create account'));
  const aliases = h('div', {});
  async function loadAliases(): Promise<void> {
    const r = await api<{ aliases: { address: string; targets: string[] }[] }>('GET', '/aliases');
    clear(aliases, table(['Alias', 'Delivers to', ''], r.aliases.map(a => [t(a.address), t(a.targets.join(', ')),
      h('button', { class: 'danger', onclick: async () => {
        await api('DELETE', '/aliases/' + encodeURIComponent(a.address)).catch(e => notice(e.message, 'error'));
        loadAliases();
      } }, 'Remove')]), 'grid'));
  }
  const aAddr = h('input', { name: 'alias', placeholder: 'info@' + (me.domains[0] || 'example.com') });
  const aTargets = h('input', { name: 'targets', placeholder: 'user@..., user2@...', size: 36 });
  const aForm = h('form', { class: 'search', onsubmit: async (e: Event) => {
    e.preventDefault();
    const targets = aTargets.value.split(',').map(x => x.trim()).filter(Boolean);
    await api('POST', '/aliases', { address: aAddr.value.trim(), targets })
      .then(() => { notice(aAddr.value + ' set'); aAddr.value = ''; aTargets.value = ''; loadAliases(); }, err => notice(err.message, 'error'));
  } }, aAddr, aTargets, h('button', { type: 'submit' }, 'Set alias'));
  clear(view, h('header', {}, h('h1', {}, 'Accounts')), form, out, h('h2', {}, 'Aliases'), aForm, aliases);
  await Promise.all([load(), loadAliases()]);
}

// ---------------------------------------------------------------- tokens
export async function tokens(view: HTMLElement): Promise<void> {
  const out = h('div', {});
  const shown = h('div', {});
  async function load(): Promise<void> {
    const r = await api<{ tokens: { id: string; name: string; created: number }[] }>('GET', '/tokens');
    clear(out, table(['Name', 'Created', ''], r.tokens.map(x => [t(x.name), t(fmtDate(x.created)),
      h('button', { class: 'danger', onclick: async () => { await api('DELETE', '/tokens/' + x.id); load(); } }, 'Revoke')]), 'grid'));
  }
  const name = h('input', { name: 'name', placeholder: 'what it is for' });
  clear(view, h('header', {}, h('h1', {}, 'API tokens')),
    h('p', { class: 'muted' }, 'For automation: send it as "Authorization: Bearer TOKEN". It acts with your role.'),
    h('form', { class: 'search', onsubmit: async (e: Event) => {
      e.preventDefault();
      const r = await api<{ token: string }>('POST', '/tokens', { name: name.value.trim() });
      clear(shown, h('p', { class: 'notice ok' }, 'Copy it now, it is not shown again: ', h('code', { id: 'new-token' }, r.token)));
      name.value = '';
      load();
    } }, name, h('button', { type: 'submit' }, 'Create token')), shown, out);
  await load();
}

// ---------------------------------------------------------------- settings
export async function settings(view: HTMLElement, me: Me): Promise<void> {
  const old = h('input', { type: 'password', autocomplete: 'current-password', placeholder: 'current password' });
  const neu = h('input', { type: 'password', autocomplete: 'new-password', placeholder: 'new password' });
  const totpBox = h('div', {});
  const fresh = await api<Me>('GET', '/me');
  function totpOff(): void {
    clear(totpBox, h('p', {}, 'Two-factor sign-in is off.'), h('button', { id: 'totp-start', onclick: async () => {
      const s = await api<{ secret: string; uri: string }>('POST', '/me/totp');
      const code = h('input', { id: 'totp-code', inputmode: 'numeric', placeholder: '6-digit code' });
      clear(totpBox, h('p', {}, 'Add this key to your authenticator app, then enter the code it shows.'),
        h('p', {}, h('code', { id: 'totp-secret' }, s.secret)), h('p', { class: 'muted' }, s.uri),
        h('form', { onsubmit: async (e: Event) => {
          e.preventDefault();
          const r = await api<{ recovery_codes: string[] }>('POST', '/me/totp/confirm', { code: code.value.trim() }).catch(err => { notice(err.message, 'error'); return null; });
          if (r) clear(totpBox, h('p', {}, 'Two-factor sign-in is on. Keep these recovery codes; each works once:'),
            h('ul', { id: 'recovery' }, r.recovery_codes.map(c => h('li', {}, h('code', {}, c)))));
        } }, code, h('button', { type: 'submit' }, 'Turn on')));
    } }, 'Set up two-factor sign-in'));
  }
  // app passwords: what mail clients log in with (IMAP, POP3, SMTP);
  // with two-factor on, the only way in there
  const appsBox = h('div', { id: 'app-passwords' });
  const appShown = h('div', {});
  const appName = h('input', { id: 'app-name', name: 'name', placeholder: 'device, e.g. phone' });
  async function loadApps(): Promise<void> {
    const r = await api<{ required: boolean; app_passwords: { name: string; created: number; last_used: number }[] }>('GET', '/me/app-passwords');
    clear(appsBox, h('p', { class: 'muted' }, r.required
      ? 'Two-factor sign-in is on: mail clients (IMAP, POP3, SMTP) log in with an app password only, never with your password.'
      : 'Mail clients (IMAP, POP3, SMTP) may log in with an app password instead of your password; with two-factor sign-in on, they must.'),
    table(['Name', 'Created', 'Last used', ''], r.app_passwords.map(x => [t(x.name), t(fmtDate(x.created)),
      t(x.last_used ? fmtDate(x.last_used) : 'never'),
      h('button', { class: 'danger', onclick: async () => {
        await api('DELETE', '/me/app-passwords/' + encodeURIComponent(x.name)).then(() => notice('Revoked'), err => notice(err.message, 'error'));
        loadApps();
      } }, 'Revoke')]), 'grid'));
  }
  const appForm = h('form', { class: 'search', onsubmit: async (e: Event) => {
    e.preventDefault();
    const r = await api<{ name: string; password: string }>('POST', '/me/app-passwords', { name: appName.value.trim() }).catch(err => { notice(err.message, 'error'); return null; });
    if (r) {
      clear(appShown, h('p', { class: 'notice ok' }, 'App password for ' + r.name + ' (copy it now, it is not shown again): ',
        h('code', { id: 'new-app-password' }, r.password)));
      appName.value = '';
      loadApps();
    }
  } }, appName, h('button', { type: 'submit' }, 'Create app password'));
  if (fresh.totp) {
    const pw = h('input', { type: 'password', placeholder: 'password' });
    clear(totpBox, h('p', {}, 'Two-factor sign-in is on.'), h('form', { onsubmit: async (e: Event) => {
      e.preventDefault();
      await api('DELETE', '/me/totp', { password: pw.value }).then(() => { notice('Two-factor sign-in is off'); totpOff(); }, err => notice(err.message, 'error'));
    } }, pw, h('button', { type: 'submit' }, 'Turn off')));
  } else {
    totpOff();
  }
  clear(view, h('header', {}, h('h1', {}, 'My account')),
    me.must_enroll ? h('p', { class: 'notice error' }, 'Admins must use two-factor sign-in here: set it up to go on.') : null,
    h('section', {}, h('h2', {}, 'Password'), h('form', { class: 'search', onsubmit: async (e: Event) => {
      e.preventDefault();
      await api('POST', '/me/password', { old: old.value, new: neu.value }).then(() => { notice('Password changed'); old.value = neu.value = ''; }, err => notice(err.message, 'error'));
    } }, old, neu, h('button', { type: 'submit' }, 'Change'))),
    h('section', {}, h('h2', {}, 'Two-factor sign-in'), totpBox),
    me.must_enroll ? null : h('section', {}, h('h2', {}, 'App passwords'), appForm, appShown, appsBox));
  if (!me.must_enroll) await loadApps();
}
