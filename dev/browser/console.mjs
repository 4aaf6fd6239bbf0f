// Drives the cluster page in Debian's headless Chromium, as an operator
// would: opens a sign-in link, signs in, waits for the page to show the
// nodes, takes a screenshot, tries the spent link in a second browser,
// signs out. Prints what it saw as one JSON line; tests/console.rs judges it.
//
//   node console.mjs LINK CA_SPKI_BASE64 NODE SCREENSHOT
//
// CA_SPKI_BASE64 is the cluster CA's public-key hash: Chromium trusts the
// page's certificate because its chain has that key, and nothing else.
import { chromium } from "playwright-core";

const [link, caSpki, node, screenshot] = process.argv.slice(2);
if (!link || !caSpki || !node || !screenshot) {
  console.error("usage: node console.mjs LINK CA_SPKI_BASE64 NODE SCREENSHOT");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // Root in a test host: Chromium's sandbox needs user namespaces it may not get.
  args: ["--no-sandbox", `--ignore-certificate-errors-spki-list=${caSpki}`],
});
const seen = {};
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  await page.goto(link);
  await page.click("#signin");
  await page.waitForURL(/\/console$/);
  await page.locator("#nodes td", { hasText: node }).first().waitFor({ timeout: 30000 });
  seen.verdict = await page.textContent("#verdict");
  seen.etcd = await page.textContent("#etcd-summary");
  seen.nodes = await page.locator("#nodes tr").count() - 1;
  seen.servedBy = await page.textContent("#served-by");
  const cookies = await context.cookies();
  seen.cookie = cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite }));
  // A script on the page cannot read the session.
  seen.scriptSeesCookie = await page.evaluate(() => document.cookie.includes("hakube_session"));
  await page.screenshot({ path: screenshot, fullPage: true });

  // The spent link, in another browser: refused.
  const other = await (await browser.newContext()).newPage();
  await other.goto(link);
  await other.click("#signin");
  seen.reuse = await other.textContent("body");

  // The page's own errors while signed in (the signed-out page that
  // follows is a 401, which Chromium logs too).
  seen.consoleErrors = [...consoleErrors];

  // Signing out ends it: the page asks for a link again.
  await page.click("#signout button");
  await page.locator("#message").waitFor({ timeout: 30000 });
  seen.afterSignOut = await page.textContent("body");
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
