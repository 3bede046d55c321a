// A held message's HTML, made inert for the sandboxed preview: parsed by
// DOMParser (which runs nothing and loads nothing), then rebuilt from an
// allow-list of elements with no attributes that could load or run
// anything: no src, href, style, event handlers, forms, frames or SVG.
// The result goes into <iframe sandbox srcdoc> with its own CSP that
// allows nothing either; this is the second and third line of defence.
const KEEP = new Set(['a', 'abbr', 'b', 'blockquote', 'br', 'caption', 'code', 'dd', 'del', 'div',
  'dl', 'dt', 'em', 'font', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr', 'i', 'ins', 'li', 'ol', 'p',
  'pre', 'q', 's', 'small', 'span', 'strong', 'sub', 'sup', 'table', 'tbody', 'td', 'tfoot', 'th',
  'thead', 'tr', 'u', 'ul', 'center', 'section', 'article', 'header', 'footer', 'main']);
const DROP_WITH_CONTENT = new Set(['script', 'style', 'noscript', 'template', 'iframe', 'object',
  'embed', 'svg', 'math', 'head', 'title', 'form', 'select', 'textarea', 'button', 'video',
  'audio', 'canvas', 'link', 'meta', 'base']);
const ATTRS = new Set(['colspan', 'rowspan', 'align', 'valign', 'dir', 'lang', 'title']);

export const PREVIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'";

function rebuild(src: Node, out: Document, parent: Node, links: string[]): void {
  for (const n of Array.from(src.childNodes)) {
    if (n.nodeType === Node.TEXT_NODE) {
      parent.appendChild(out.createTextNode(n.textContent || ''));
      continue;
    }
    if (n.nodeType !== Node.ELEMENT_NODE) continue;
    const el = n as Element;
    const tag = el.localName;
    if (DROP_WITH_CONTENT.has(tag)) continue;
    if (tag === 'img') {
      const alt = el.getAttribute('alt');
      parent.appendChild(out.createTextNode(alt ? '[image: ' + alt + ']' : '[image]'));
      continue;
    }
    if (!KEEP.has(tag)) {           // unknown wrapper: keep its content only
      rebuild(el, out, parent, links);
      continue;
    }
    const copy = out.createElement(tag === 'a' ? 'span' : tag);
    for (const a of Array.from(el.attributes))
      if (ATTRS.has(a.name)) copy.setAttribute(a.name, a.value);
    if (tag === 'a') {
      copy.setAttribute('class', 'link');
      const href = el.getAttribute('href');
      if (href) links.push(href);
    }
    rebuild(el, out, copy, links);
    parent.appendChild(copy);
  }
}

export function sanitize(html: string): { doc: string; links: string[] } {
  const parsed = new DOMParser().parseFromString(html, 'text/html');
  const out = document.implementation.createHTMLDocument('');
  const links: string[] = [];
  rebuild(parsed.body, out, out.body, links);
  const csp = out.createElement('meta');
  csp.setAttribute('http-equiv', 'Content-Security-Policy');
  csp.setAttribute('content', PREVIEW_CSP);
  out.head.appendChild(csp);
  return { doc: '<!doctype html>' + out.documentElement.outerHTML, links };
}
