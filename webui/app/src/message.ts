// One held message. Everything in it is hostile: headers, subject, names
// and text are shown as text; the HTML only inside a sandboxed iframe
// (no scripts, no same origin, no forms, no navigation), rebuilt from an
// allow-list (sanitize.ts) and under a CSP that loads nothing.
import { api } from './api';
import { clear, fmtDate, fmtSize, h, notice } from './dom';
import { sanitize } from './sanitize';

interface Msg {
  id: string; date: number; client: string; helo: string; sender: string; recipients: string[];
  verdict: string; reason: string; score: number; size: number;
  symbols: { name: string; score: number; description: string }[];
  headers: { name: string; value: string }[]; subject: string; text: string; html: string;
  attachments: { filename: string; content_type: string; size: number }[];
}

export async function messagePage(view: HTMLElement, _me: unknown, id: string): Promise<void> {
  const m = await api<Msg>('GET', '/quarantine/' + encodeURIComponent(id));
  const body = h('div', { class: 'body' });
  const tabText = h('button', { class: 'tab', id: 'tab-text' }, 'Text');
  const tabHtml = h('button', { class: 'tab', id: 'tab-html', disabled: !m.html }, 'HTML (safe view)');
  function showText(): void {
    tabText.classList.add('on');
    tabHtml.classList.remove('on');
    clear(body, h('pre', { class: 'text', id: 'msg-text' }, m.text || '(no text)'));
  }
  function showHtml(): void {
    tabHtml.classList.add('on');
    tabText.classList.remove('on');
    const s = sanitize(m.html);
    const frame = h('iframe', { id: 'msg-html', sandbox: '', referrerpolicy: 'no-referrer', title: 'message HTML, sanitized' });
    frame.srcdoc = s.doc;
    clear(body, frame, s.links.length ? h('details', {}, h('summary', {}, s.links.length + ' links (not followed)'),
      h('ul', {}, s.links.map(l => h('li', {}, h('code', {}, l))))) : null);
  }
  tabText.addEventListener('click', showText);
  tabHtml.addEventListener('click', showHtml);
  const act = async (what: string, body?: unknown) => {
    await api('POST', '/quarantine/' + encodeURIComponent(m.id) + '/' + what, body);
  };
  const actions = h('div', { class: 'actions' },
    h('button', { id: 'release', onclick: async () => { await act('release'); notice('Released: on its way to ' + m.recipients.join(', ')); location.hash = '#/quarantine'; } }, 'Release'),
    h('button', { onclick: async () => { await act('learn', { as: 'ham' }).then(() => notice('Learned as not spam'), e => notice(e.message, 'error')); } }, 'Not spam'),
    h('button', { onclick: async () => { await act('learn', { as: 'spam' }).then(() => notice('Learned as spam'), e => notice(e.message, 'error')); } }, 'Spam'),
    h('button', { class: 'danger', onclick: async () => { await act('delete'); notice('Deleted'); location.hash = '#/quarantine'; } }, 'Delete'));
  clear(view,
    h('header', {}, h('h1', { id: 'msg-subject' }, m.subject || '(no subject)'), h('a', { href: '#/quarantine' }, '‹ back to the quarantine')),
    actions,
    h('dl', { class: 'envelope' },
      h('dt', {}, 'From'), h('dd', { id: 'msg-sender' }, m.sender || '<>'),
      h('dt', {}, 'To'), h('dd', {}, m.recipients.join(', ')),
      h('dt', {}, 'Received'), h('dd', {}, fmtDate(m.date) + ' from ' + (m.helo || '?') + ' [' + m.client + ']'),
      h('dt', {}, 'Held'), h('dd', {}, m.verdict), h('dt', {}, 'Score'), h('dd', {}, m.score.toFixed(2)),
      h('dt', {}, 'Size'), h('dd', {}, fmtSize(m.size))),
    h('h2', {}, 'Why'), h('table', { class: 'grid' }, h('tbody', {}, m.symbols.map(s =>
      h('tr', {}, h('td', {}, s.name), h('td', { class: 'num' }, s.score.toFixed(2)), h('td', {}, s.description))))),
    m.attachments.length ? [h('h2', {}, 'Attachments'), h('ul', {}, m.attachments.map(a =>
      h('li', {}, a.filename || '(unnamed)', ' ', h('span', { class: 'muted' }, a.content_type + ', ' + fmtSize(a.size)))))] : null,
    h('h2', {}, 'Content'), h('div', { class: 'tabs' }, tabText, tabHtml), body,
    h('details', {}, h('summary', {}, 'Headers (' + m.headers.length + ')'),
      h('table', { class: 'grid headers' }, h('tbody', {}, m.headers.map(x => h('tr', {}, h('th', {}, x.name), h('td', {}, x.value)))))));
  if (m.html && !m.text) showHtml(); else showText();
}
