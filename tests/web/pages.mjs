// pages.mjs: the chat page and the pipeline view in headless Chromium (puppeteer-core).
// Usage: node pages.mjs URL1 URL3 OUTDIR
//   URL1: a 1-rank server: the chat page loads, a message streams a reply equal to the API's
//         answer for the same request, the stop button ends a reply mid-stream and the page
//         takes the next message; URL3: a 3-rank server: the pipeline view shows 3 rows with
//         the plan's layers. Screenshots go to OUTDIR.
import puppeteer from "puppeteer-core";

const [url1, url3, out] = process.argv.slice(2);
const fail = (m) => { console.log("FAIL " + m); process.exit(1); };
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 760 });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  // 1. the chat page loads and knows the model
  await page.goto(url1 + "/", { waitUntil: "load" });
  await page.waitForFunction(() => document.getElementById("model").textContent.length > 0,
                             { timeout: 20000 });
  const model = await page.$eval("#model", (e) => e.textContent);
  console.log("ok chat page loaded (model " + model + ")");

  // 2. a greedy message streams its reply; it equals the API's non-streamed answer
  const setv = async (id, v) => page.$eval(id, (e, v) => { e.value = v; }, v);
  await setv("#temperature", "0");
  await setv("#max_tokens", "40");
  await page.type("#input", "Tell me a story about a cat.");
  await page.click("#send");
  await page.waitForFunction(() => {
    const m = document.querySelectorAll(".meta");
    return m.length && m[m.length - 1].dataset.state;
  }, { timeout: 60000 });
  const reply = await page.$$eval(".assistant", (e) => e[e.length - 1].textContent);
  const meta = await page.$$eval(".meta", (e) => e[e.length - 1].textContent);
  if (!/tok\/s/.test(meta)) fail("no tok/s shown: " + meta);
  const api = await (await fetch(url1 + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "Tell me a story about a cat." }],
                           temperature: 0, top_p: 0.95, max_tokens: 40 }),
  })).json();
  const want = api.choices[0].message.content;
  if (!reply || reply !== want) fail(`streamed reply ${JSON.stringify(reply)} != API ${JSON.stringify(want)}`);
  await page.screenshot({ path: out + "/chat.png" });
  console.log("ok chat: streamed " + JSON.stringify(reply.slice(0, 50)) + "... equal to the API; " + meta);

  // 3. stop: the reply arrives slowly (the network throttled), Stop ends it mid-stream
  const cdp = await page.target().createCDPSession();
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions",
                 { offline: false, latency: 0, downloadThroughput: 1500, uploadThroughput: 100000 });
  await setv("#max_tokens", "200");
  await setv("#temperature", "0.8");
  await page.type("#input", "And another one.");
  await page.click("#send");
  await page.waitForFunction(() => {
    const a = document.querySelectorAll(".assistant");
    return a.length === 2 && a[1].textContent.length > 0;
  }, { timeout: 60000 });
  await page.click("#stop");
  await page.waitForFunction(() => {
    const m = document.querySelectorAll(".meta");
    return m.length === 2 && m[1].dataset.state === "stopped";
  }, { timeout: 10000 });
  const cut = await page.$$eval(".assistant", (e) => e[1].textContent);
  await new Promise((r) => setTimeout(r, 1000));
  const later = await page.$$eval(".assistant", (e) => e[1].textContent);
  if (later !== cut) fail("text kept growing after Stop");
  const sendOk = await page.$eval("#send", (e) => !e.disabled);
  const stopOff = await page.$eval("#stop", (e) => e.disabled);
  if (!sendOk || !stopOff) fail("buttons not reset after Stop");
  const m2 = await page.$$eval(".meta", (e) => e[1].textContent);
  await page.screenshot({ path: out + "/chat-stopped.png" });
  await cdp.send("Network.emulateNetworkConditions",
                 { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  console.log("ok stop: " + m2 + " (" + cut.length + " characters), Send enabled again");

  // 4. the pipeline view of a 3-rank server: one row per rank, the plan's layers
  const props = await (await fetch(url3 + "/props")).json();
  await page.goto(url3 + "/pipeline", { waitUntil: "load" });
  await page.waitForFunction(() => document.querySelectorAll("tr.rank").length > 0, { timeout: 20000 });
  const rows = await page.$$eval("tr.rank", (r) => r.map((x) => [...x.cells].map((c) => c.textContent)));
  if (rows.length !== 3 || props.n_ranks !== 3) fail("pipeline rows: " + JSON.stringify(rows));
  for (let i = 0; i < 3; i++) {
    const p = props.plan[i];
    const l = p.layers[1] > p.layers[0] ? "[" + p.layers[0] + ", " + p.layers[1] + ")" : "-";
    if (!rows[i][1].startsWith(l)) fail(`rank ${i} layers ${rows[i][1]}, expected ${l}`);
  }
  await page.screenshot({ path: out + "/pipeline.png" });
  console.log("ok pipeline view: " + rows.map((r) => r[0] + " " + r[1] + " " + r[2]).join(" | "));
  if (errors.length) fail("page errors: " + errors.join("; "));
} finally {
  await browser.close();
}
