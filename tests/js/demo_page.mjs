// Open the demo page (docs/demo/) in headless Chromium, wait until it has drawn, and write what
// it fed the model and what it got (JSON) and a screenshot (PNG). For tests/test_demo.py.
//
//   node demo_page.mjs URL OUT.json OUT.png
import { writeFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [url, jsonPath, pngPath] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 620 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => (window.onnxfcnDemo && window.onnxfcnDemo.done)
    || document.getElementById("status").textContent.startsWith("error"), null, { timeout: 60000 });
  const status = await page.textContent("#status");
  const result = await page.evaluate(() => window.onnxfcnDemo || null);
  await writeFile(jsonPath, JSON.stringify({ status, errors, result }));
  await page.screenshot({ path: pngPath, fullPage: true });
} catch (err) {
  process.stderr.write(String(err.message || err).split("\n")[0] + "\n");
  process.exitCode = 1;
} finally {
  await browser.close();
}
