// Opens an asset's events page in the Dagster UI in Debian's Chromium (playwright-core from
// the viewer test's node_modules; no browser is downloaded), opens the markdown metadata
// entry LABEL ("[Show Markdown]") and reports the images the dialog rendered.
// Usage: node markdown_metadata.mjs URL LABEL OUT.png CHROMIUM USER_DATA_DIR NODE_MODULES_DIR
import { createRequire } from 'node:module'

const [url, label, out, executablePath, userDataDir, modules] = process.argv.slice(2)
const { chromium } = createRequire(`${modules}/`)('playwright-core')
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const page = context.pages()[0] || await context.newPage()
await page.goto(url)
const row = page.locator('tr', { has: page.locator('td', { hasText: new RegExp(`^${label}$`) }) })
await row.getByText('[Show Markdown]').click({ timeout: 60000 })
const dialog = page.getByRole('dialog')
await dialog.locator('img').first().waitFor({ timeout: 30000 })
await page.waitForFunction(() => [...document.querySelectorAll('[role=dialog] img')].every((i) => i.complete))
const images = await dialog.locator('img').evaluateAll((all) => all.map((i) => ({
  alt: i.alt, scheme: (i.getAttribute('src') || '').split(',')[0], width: i.naturalWidth, height: i.naturalHeight,
})))
await page.screenshot({ path: out })
console.log(`RESULT ${JSON.stringify({ images, text: await dialog.innerText() })}`)
await context.close()
