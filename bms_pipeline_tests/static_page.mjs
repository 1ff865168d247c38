// Opens a static page in Debian's Chromium (playwright-core from the viewer test's
// node_modules drives it; no browser is downloaded), reports every console error, page
// error and failed request, what each slide row shows, and saves a screenshot.
// Usage: node static_page.mjs URL OUT.png CHROMIUM USER_DATA_DIR NODE_MODULES_DIR
import { createRequire } from 'node:module'

const [url, out, executablePath, userDataDir, modules] = process.argv.slice(2)
const { chromium } = createRequire(`${modules}/`)('playwright-core')
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  viewport: { width: 1200, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const problems = []
const page = context.pages()[0] || await context.newPage()
page.on('console', (m) => { if (m.type() === 'error') problems.push(`console.error: ${m.text()}`) })
page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`))
page.on('requestfailed', (r) => problems.push(`requestfailed: ${r.url()}`))
await page.goto(url, { waitUntil: 'load' })
const rows = await page.evaluate(() => [...document.querySelectorAll('tr.slide')].map((row) => {
  const img = row.querySelector('img')
  return {
    slide: row.dataset.slide,
    image: img ? { loaded: img.complete, width: img.naturalWidth, height: img.naturalHeight } : null,
    text: row.innerText,
  }
}))
const notPublished = await page.evaluate(() => document.querySelector('#not-published').innerText)
const leftOut = await page.evaluate(() => document.querySelector('#left-out').innerText)
await page.screenshot({ path: out, fullPage: true })
console.log(`RESULT ${JSON.stringify({ problems, rows, notPublished, leftOut })}`)
await context.close()
