// The only way the app makes DOM: elements and text nodes. Text from the
// API (subjects, names, addresses: all hostile) is never parsed as markup.
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;
type Child = Node | string | number | null | undefined | false | Child[];

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {},
    ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v as EventListener);
    } else if (k === 'class') {
      el.className = String(v);
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

export function fmtDate(t: number): string {
  if (!t) return '';
  const d = new Date(t * 1000);
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: '2-digit',
                                       hour: '2-digit', minute: '2-digit' });
}

export function fmtSize(n: number): string {
  if (n < 1024) return n + ' B';
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KB';
  return (n / 1024 / 1024).toFixed(1) + ' MB';
}

export function notice(msg: string, kind: 'ok' | 'error' = 'ok'): void {
  const box = document.getElementById('notice');
  if (!box) return;
  clear(box, h('div', { class: 'notice ' + kind, role: kind === 'error' ? 'alert' : 'status' }, msg));
  window.setTimeout(() => { if (box.firstChild) box.replaceChildren(); }, 6000);
}
