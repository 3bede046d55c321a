// Browser test of the web app: Debian's chromium driven by playwright-core.
// Started by tests/integration/test_browser.py, which runs moatd, puts mail
// in the quarantine and passes what to look for in the environment. Prints
// one JSON line of findings; exits non-zero on the first failed check.
import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(path.resolve(process.env.APP_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const BASE = process.env.BASE;                 // https://127.0.0.1:PORT
const OUT = process.env.SCREENSHOTS;
const PW = process.env.PASSWORD;
mkdirSync(OUT, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error('check failed: ' + what);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--no-first-run'],
});
const found = { foreign: [], dialogs: [], console: [], screenshots: [] };
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const origin = new URL(BASE).host;
  // every request that would leave for another host is recorded and stopped
  await context.route('**/*', route => {
    const u = new URL(route.request().url());
    if (u.protocol !== 'data:' && u.protocol !== 'about:' && u.host !== origin) {
      found.foreign.push(route.request().url());
      return route.abort();
    }
    return route.continue();
  });
  const page = await context.newPage();
  page.on('dialog', d => { found.dialogs.push(d.message()); d.dismiss(); });
  page.on('console', m => { if (m.type() === 'error') found.console.push(m.text()); });
  const shot = async name => {
    const f = path.join(OUT, name + '.png');
    await page.screenshot({ path: f, fullPage: true });
    found.screenshots.push(f);
  };

  // sign in as the superadmin
  await page.goto(BASE + '/');
  await page.waitForSelector('form.login');
  await shot('01-sign-in');
  await page.fill('#user', process.env.ADMIN);
  await page.fill('#password', PW);
  await page.click('#signin');
  await page.waitForSelector('nav .who');

  // the dashboard draws both charts
  await page.waitForSelector('figure.chart canvas');
  const charts = await page.$$eval('figure.chart', figs => figs.map(f => {
    const c = f.querySelector('canvas');
    const ctx = c.getContext('2d');
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    let drawn = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) drawn++;
    return { title: f.dataset.chart, width: c.width, height: c.height, drawn, legend: f.querySelectorAll('.u-legend .u-series').length };
  }));
  check(charts.length === 2 && charts.every(c => c.width > 300 && c.height > 100 && c.drawn > 1000),
        'two drawn charts: ' + JSON.stringify(charts));
  const accepted = await page.textContent('.total[data-series=accepted] b');
  check(Number(accepted) >= 1, 'accepted total ' + accepted);
  found.charts = charts;
  await shot('02-dashboard');

  // the quarantine: find the report, open it, release it
  await page.click('nav a[href="#/quarantine"]');
  await page.waitForSelector('#qlist tbody tr[data-id]');
  await shot('03-quarantine');
  await page.fill('input[name=subject]', 'quarterly');
  await page.click('form.search button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#qtotal')?.textContent === '1 messages');
  await page.click('#qlist a.subject');
  await page.waitForSelector('#msg-subject');
  check((await page.textContent('#msg-subject')) === 'HOLDME quarterly report', 'the subject');
  check((await page.textContent('#msg-text')).includes('figures attached'), 'the text');
  await shot('04-message');
  await page.click('#release');
  await page.waitForSelector('.notice.ok');
  found.released = (await page.textContent('.notice.ok'));
  await page.waitForSelector('#qlist');

  // the hostile message: shown inert
  await page.fill('input[name=subject]', 'look');
  await page.click('form.search button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#qtotal')?.textContent === '1 messages');
  const listed = await page.textContent('#qlist a.subject');
  check(listed === process.env.EVIL_SUBJECT, 'the listed subject is the text itself: ' + listed);
  check(await page.$('#qlist img') === null, 'no image element made from the subject');
  await page.click('#qlist a.subject');
  await page.waitForSelector('#msg-subject');
  check((await page.textContent('#msg-subject')) === process.env.EVIL_SUBJECT, 'subject as text');
  check(await page.$('#msg-subject *') === null, 'no element inside the subject');
  await page.click('#tab-html');
  await page.waitForSelector('iframe#msg-html');
  const sandbox = await page.getAttribute('iframe#msg-html', 'sandbox');
  check(sandbox === '', 'iframe sandbox with no permissions: ' + JSON.stringify(sandbox));
  const frame = page.frames().find(f => f !== page.mainFrame());
  await frame.waitForLoadState();
  const inner = await frame.evaluate(() => ({
    text: document.body.innerText,
    scripts: document.querySelectorAll('script').length,
    images: document.querySelectorAll('img').length,
    handlers: [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on') || a.name === 'style' || a.name === 'src' || a.name === 'href')).length,
    csp: document.querySelector('meta[http-equiv=Content-Security-Policy]')?.getAttribute('content'),
  }));
  check(inner.text.includes('Dear customer') && inner.scripts === 0 && inner.images === 0 && inner.handlers === 0,
        'the HTML is inert: ' + JSON.stringify(inner));
  check(inner.csp.startsWith("default-src 'none'"), 'the preview CSP');
  await page.waitForTimeout(800);         // time for anything that would run or load
  const xss = await page.evaluate(() => window.__xss);
  check(xss === undefined, 'no script of the message ran: ' + xss);
  found.inner = inner;
  await shot('05-message-html');

  // the other pages
  for (const [route, sel, name] of [['trace', '#trace', '06-trace'], ['lists', '.lists', '07-lists'],
                                    ['queue', 'main table', '08-queue'], ['nodes', '#nodes td', '08-nodes'],
                                    ['domains', 'main table', '09-domains'],
                                    ['accounts', 'main table', '10-accounts'], ['tokens', 'main table', '11-tokens'],
                                    ['settings', '#totp-start', '12-settings']]) {
    await page.click('nav a[href="#/' + route + '"]');
    await page.waitForSelector(sel);
    await shot(name);
  }
  await page.click('nav a[href="#/nodes"]');
  await page.waitForSelector('#nodes tbody tr');
  found.nodes = await page.$$eval('#nodes tbody tr', r => r.map(x => [...x.children].map(c => c.textContent)));
  await page.click('nav a[href="#/trace"]');
  await page.waitForSelector('#trace');
  await page.fill('input[name=q]', process.env.TRACE_ADDRESS);
  await page.click('form.search button[type=submit]');
  await page.waitForSelector('section.trace');
  found.trace = await page.$$eval('section.trace .badge', b => b.map(x => x.textContent));
  await shot('06-trace');
  check(found.dialogs.length === 0, 'no dialogs: ' + found.dialogs);
  check(found.foreign.length === 0, 'no request for another host: ' + found.foreign);

  // a user signs in and sees the quarantine, not the admin pages
  const user = await context.newPage();
  await context.clearCookies();
  await user.goto(BASE + '/');
  await user.waitForSelector('form.login');
  await user.fill('#user', process.env.USER_ADDR);
  await user.fill('#password', PW);
  await user.click('#signin');
  await user.waitForSelector('#qlist');
  found.user_nav = await user.$$eval('nav a', a => a.map(x => x.textContent));
  await user.screenshot({ path: path.join(OUT, '13-user-quarantine.png'), fullPage: true });

  // she makes an app password for her phone's mail client: shown once, listed
  await user.click('nav a[href="#/settings"]');
  await user.waitForSelector('#app-passwords table');
  await user.fill('#app-name', 'phone');
  await user.click('button:has-text("Create app password")');
  await user.waitForSelector('#new-app-password');
  found.app_password = (await user.textContent('#new-app-password')).trim();
  await user.waitForSelector('#app-passwords td:has-text("phone")');
  found.app_rows = await user.$$eval('#app-passwords tbody tr', r => r.map(x => x.textContent));
  await user.screenshot({ path: path.join(OUT, '14-app-passwords.png'), fullPage: true });
  console.log(JSON.stringify(found));
} finally {
  await browser.close();
}
