// Drives the cluster page in Debian's headless Chromium, as an operator
// would, with tests/console.rs playing the hosts:
//
// 1. opens a sign-in link and signs in; waits for the page to show NODE;
// 2. "Add node" for a worker: writes the script shown to DIR/w1.sh (the
//    test runs it on a new host) and waits for w1 to appear;
// 3. "Add node" again, revokes that token from the tokens table, writes
//    the script to DIR/w2.sh (the test checks that it is refused);
// 4. writes DIR/w1.up, waits for DIR/w1.down (the test powers w1 off),
//    then removes w1 with its "Remove" button once it shows;
// 5. takes a screenshot (DIR/console.png), tries the spent link in a
//    second browser, signs out.
//
// Prints what it saw as one JSON line; the test judges it.
//
//   node console.mjs LINK CA_SPKI_BASE64 NODE DIR
//
// CA_SPKI_BASE64 is the cluster CA's public-key hash: Chromium trusts the
// page's certificate because its chain has that key, and nothing else.
import { chromium } from "playwright-core";
import { existsSync, writeFileSync } from "node:fs";

const [link, caSpki, node, dir] = process.argv.slice(2);
if (!link || !caSpki || !node || !dir) {
  console.error("usage: node console.mjs LINK CA_SPKI_BASE64 NODE DIR");
  process.exit(2);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitForFile(path, ms) {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(200)) {
    if (existsSync(path)) return;
  }
  throw new Error(`no ${path} within ${ms} ms`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // Root in a test host: Chromium's sandbox needs user namespaces it may not get.
  args: ["--no-sandbox", `--ignore-certificate-errors-spki-list=${caSpki}`],
});
const seen = {};
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  // "Remove" asks for the node's name.
  page.on("dialog", (d) => d.accept("w1"));
  const row = (name) => page.locator("#nodes tr", { has: page.locator("td:first-child", { hasText: name }) });

  await page.goto(link);
  await page.click("#signin");
  await page.waitForURL(/\/console$/);
  await row(node).waitFor({ timeout: 30000 });
  seen.verdict = await page.textContent("#verdict");
  seen.etcd = await page.textContent("#etcd-summary");
  seen.servedBy = await page.textContent("#served-by");
  const cookies = await context.cookies();
  seen.cookie = cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite }));
  // A script on the page cannot read the session.
  seen.scriptSeesCookie = await page.evaluate(() => document.cookie.includes("hakube_session"));

  // Add a worker: the script the page shows runs on a new host.
  await page.selectOption("#add-node select[name=role]", "worker");
  await page.selectOption("#add-node select[name=ttl]", "3600");
  await page.click("#add-node button[type=submit]");
  await page.locator("#join-script").filter({ hasText: "#!" }).waitFor();
  writeFileSync(`${dir}/w1.sh`, await page.textContent("#join-script"));
  seen.tokenShown = await page.textContent("#join-id");
  await row("w1").waitFor({ timeout: 120000 });
  seen.w1Row = await row("w1").textContent();
  seen.lastJoin = await page.textContent("#joins tr:nth-child(2) td:first-child");

  // A second script, its token revoked from the table: the test runs it.
  await page.click("#add-node button[type=submit]");
  const second = await page.locator("#join-id").filter({ hasNotText: seen.tokenShown }).textContent();
  const script = await page.textContent("#join-script");
  const tokenRow = page.locator("#tokens tr", { has: page.locator("td:first-child", { hasText: second }) });
  await tokenRow.locator("button", { hasText: "Revoke" }).click();
  await tokenRow.waitFor({ state: "detached" });
  writeFileSync(`${dir}/w2.sh`, script);
  seen.revoked = second;

  // w1 goes away for good: the page offers to remove it, and does.
  writeFileSync(`${dir}/w1.up`, "");
  await waitForFile(`${dir}/w1.down`, 120000);
  await row("w1").locator("button", { hasText: "Remove" }).click({ timeout: 90000 });
  await row("w1").waitFor({ state: "detached", timeout: 30000 });
  seen.removed = "w1";
  seen.actionError = await page.locator("#action-error").isVisible();

  await page.screenshot({ path: `${dir}/console.png`, fullPage: true });
  // The page's own errors while signed in (the signed-out page that
  // follows is a 401, which Chromium logs too).
  seen.consoleErrors = [...consoleErrors];

  // The spent link, in another browser: refused.
  const other = await (await browser.newContext()).newPage();
  await other.goto(link);
  await other.click("#signin");
  seen.reuse = await other.textContent("body");

  // Signing out ends it: the page asks for a link again.
  await page.click("#signout button");
  await page.locator("#message").waitFor({ timeout: 30000 });
  seen.afterSignOut = await page.textContent("body");
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
