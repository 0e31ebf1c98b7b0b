/* The /verify page: wires the file inputs to AgentGuardVerify and shows progress and the verdict. */
(function () {
  "use strict";
  const V = globalThis.AgentGuardVerify;
  const $ = (id) => document.getElementById(id);
  const verdict = $("verdict");
  let shared = null;

  function setVerdict(kind, text) {
    verdict.textContent = text;
    if (kind) verdict.dataset.verdict = kind; else delete verdict.dataset.verdict;
  }

  function showProgress(done, total) {
    const share = total > 0 ? Math.floor((done / total) * 1000) / 10 : 100;
    $("progress-box").hidden = false;
    $("progress").value = share;
    $("progress-text").textContent = `${share.toFixed(1)}%`;
  }

  function base64UrlDecode(text) {
    const std = text.replace(/-/g, "+").replace(/_/g, "/");
    return V.base64Decode(std + "=".repeat((4 - (std.length % 4)) % 4));
  }

  function showFields(receipt) {
    const body = $("fields").tBodies[0];
    body.replaceChildren();
    for (const [name, value] of receipt) {
      const row = body.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = name;
      row.appendChild(th);
      row.insertCell().textContent = typeof value === "string" ? value : V.jsonText(value);
    }
    $("shared").hidden = false;
  }

  async function run() {
    const keyFiles = [...$("keys").files];
    const logFiles = [...$("receipts").files];
    $("summary").hidden = true;
    if (!keyFiles.length) {
      setVerdict("error", "Pick the trusted public key file(s) first.");
      return;
    }
    if (!logFiles.length && shared === null) {  // zero receipts would verify: say what is missing instead
      setVerdict("error", "Pick the receipt segment files first.");
      return;
    }
    setVerdict(null, "");
    verdict.textContent = "verifying…";
    try {
      const keys = await V.loadKeys(keyFiles);
      if (shared !== null && !logFiles.length) {
        const result = await V.verifyReceiptLine(shared, keys);
        if (result.receipt) showFields(result.receipt);
        const where = result.receipt ? `chain ${result.receipt.get("chain")} seq ${result.receipt.get("seq")}` : "shared receipt";
        setVerdict(result.ok ? "ok" : "bad", V.printable(result.ok
          ? `OK: receipt ${where} verifies against the trusted keys`
          : `FAILED: shared receipt ${where}: ${result.reason}`));
        return;
      }
      const expect = $("expect-head").value.split(/\s+/).filter(Boolean);
      const report = await V.verifyLog(logFiles, keys, expect, showProgress);
      $("summary").textContent = report.lines.slice(0, -1).join("\n");
      $("summary").hidden = false;
      setVerdict(report.ok ? "ok" : "bad", report.verdict);
    } catch (exc) {
      // A keys file or expected head the CLI refuses too, or a file the browser could not read.
      setVerdict("error", exc instanceof V.ConfigError ? `agentguard: error: ${exc.message}` : `error: ${exc.message || exc}`);
    }
  }

  /** The receipt of a `#r=<base64url line>` link: its fields shown, verified once keys are picked. */
  function readShared() {
    shared = null;
    $("shared").hidden = true;
    setVerdict(null, "");
    const match = /^#r=([A-Za-z0-9_-]+)/.exec(location.hash);
    if (!match) return;
    try {
      shared = base64UrlDecode(match[1]);
    } catch (_) {
      setVerdict("bad", "FAILED: shared receipt: the link is not base64url");
      return;
    }
    try {
      const parsed = V.parseLine(shared[shared.length - 1] === 10 ? shared : new Uint8Array([...shared, 10]));
      if (parsed.value instanceof Map) showFields(parsed.value);
    } catch (_) { /* unreadable: the reason is shown when it is verified */ }
    if ($("keys").files.length) run();
  }

  $("form").addEventListener("submit", (event) => { event.preventDefault(); run(); });
  $("keys").addEventListener("change", () => { if (shared !== null) run(); });
  window.addEventListener("hashchange", readShared);
  readShared();
})();
