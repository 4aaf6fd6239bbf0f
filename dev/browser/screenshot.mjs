// Signs in to a cluster page and takes the screenshot the README shows,
// once the page lists NODES nodes; then keeps the page open for SECONDS
// and says what it fetched, the way an operator leaves it open.
//
//   node screenshot.mjs LINK CA_SPKI_BASE64 NODES OUT.png [SECONDS]
//
// Prints one JSON line: the bytes of the first load (the page and its
// assets), of one refresh, and of all the refreshes while it stayed open.
// docs/console.png is its picture of the sandbox, through the link and the
// port `scripts/sandbox.sh console` prints and forwards:
//
//   node screenshot.mjs "$LINK" "$(openssl x509 -in .sandbox/m1/var/lib/hakube/pki/ca.crt \
//     -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64)" \
//     5 ../../docs/console.png 120
import { chromium } from "playwright-core";

const [link, caSpki, nodes, out, seconds = "0"] = process.argv.slice(2);
if (!link || !caSpki || !nodes || !out) {
  console.error("usage: node screenshot.mjs LINK CA_SPKI_BASE64 NODES OUT.png [SECONDS]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", `--ignore-certificate-errors-spki-list=${caSpki}`],
});
const seen = { firstLoad: 0, refreshes: 0, refreshBytes: 0 };
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  let phase = "signin";
  // Body sizes as received (the page serves no compression).
  page.on("response", async (r) => {
    const size = (await r.body().catch(() => Buffer.alloc(0))).length;
    if (phase === "load") seen.firstLoad += size;
    if (phase === "open" && r.url().endsWith("/console/api/state")) {
      seen.refreshes += 1;
      seen.refreshBytes += size;
    }
  });
  await page.goto(link);
  phase = "load";
  await page.click("#signin");
  await page.waitForURL(/\/console$/);
  await page.waitForFunction((n) => document.querySelectorAll("#nodes tr td:first-child").length >= n, Number(nodes), {
    timeout: 60000,
  });
  phase = "open";
  await page.screenshot({ path: out, fullPage: true });
  await page.waitForTimeout(Number(seconds) * 1000);
  seen.perRefresh = seen.refreshes ? Math.round(seen.refreshBytes / seen.refreshes) : 0;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
