// Opens the page in Debian's Chromium (playwright-core drives it; no browser is downloaded),
// waits until the viewer has drawn its tiles and annotation groups, and saves a screenshot.
// Usage: node screenshot.mjs URL OUT.png CHROMIUM USER_DATA_DIR [ZOOMED.png]
// With ZOOMED.png, it then zooms in on the middle with the mouse wheel until the base level's
// tiles are drawn, and saves that too (RESULT_ZOOMED: the state after zooming).
import { chromium } from 'playwright-core'

const [url, out, executablePath, userDataDir, zoomed] = process.argv.slice(2)
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  viewport: { width: 1200, height: 800 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const page = context.pages()[0] || await context.newPage()
page.on('console', (m) => { if (m.type() === 'error') console.log(`console.${m.type()}: ${m.text()}`) })
page.on('pageerror', (e) => console.log(`pageerror: ${e.message}`))
await page.goto(url)
await page.waitForFunction(() => window.__state && window.__state.ready, null, { timeout: 90000 })
// Drawn when no tile or annotation load has happened for a second.
async function settle() {
  let last = ''
  for (let i = 0; i < 60; i++) {
    await page.waitForTimeout(1000)
    const now = JSON.stringify(await page.evaluate(() => [window.__state.frames, window.__state.featureLoads]))
    if (now === last) break
    last = now
  }
}
await settle()
await page.screenshot({ path: out })
console.log(`RESULT ${JSON.stringify(await page.evaluate(() => window.__state))}`)
if (zoomed) {
  await page.mouse.move(600, 400)
  for (let i = 0; i < 2; i++) {
    await page.mouse.wheel(0, -300)
    await page.waitForTimeout(400)
  }
  await settle()
  await page.screenshot({ path: zoomed })
  console.log(`RESULT_ZOOMED ${JSON.stringify(await page.evaluate(() => window.__state))}`)
}
await context.close()
