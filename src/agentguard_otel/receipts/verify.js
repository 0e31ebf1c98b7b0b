/* agentguard receipt verifier, in the browser: the checks and reason texts of `agentguard verify`.
 *
 * Lines are read as Python's json.loads reads them (same decoding, same error messages, integers of
 * any size kept exactly as BigInt, duplicate keys: first position, last value), canonicalized per
 * RFC 8785 as receipts/canonical.py does, hashed with SHA-256 and checked with Ed25519 through
 * WebCrypto. No network access: everything comes from the files the auditor picks.
 */
(function (root) {
  "use strict";

  const ZERO_HASH = "0".repeat(64);
  const KINDS = new Set(["decision", "settlement", "adjustment", "checkpoint"]);
  const MAX_SAFE = 9007199254740991n;
  const I64_MIN = -(2n ** 63n);
  const U64_MAX = 2n ** 64n - 1n;
  const SEGMENT = /^(.+)\.(\d+)\.ndjson$/;
  const MAX_KEY_FILE = 1 << 20;
  const YIELD_MS = 30;
  const BATCH = 256;  // receipts hashed and verified concurrently
  // json.loads raises RecursionError opening the 990th nested container when `agentguard verify` runs
  // it (Python's limit of 1000 frames, less the CLI's own); orjson, tried first, reads up to 1024.
  const STDLIB_DEPTH = 990;
  const ORJSON_DEPTH = 1024;
  const encoder = new TextEncoder();
  const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

  /** A float as Python reads it: receipts may not hold one, so only its type matters. */
  class PyFloat {
    constructor(text) { this.text = text; }
  }

  /** An error whose message is the text Python's exception would carry. */
  class PyError extends Error {}

  /** A keys file or expected head the CLI would refuse (agentguard: error: ...). */
  class ConfigError extends Error {}

  // ---- bytes to text, as json.loads(bytes) decodes them (detect_encoding, 'surrogatepass') ----

  function detectEncoding(b) {
    const n = b.length;
    if (n >= 4 && ((b[0] === 0 && b[1] === 0 && b[2] === 0xfe && b[3] === 0xff) ||
                   (b[0] === 0xff && b[1] === 0xfe && b[2] === 0 && b[3] === 0))) return "utf-32";
    if (n >= 2 && ((b[0] === 0xfe && b[1] === 0xff) || (b[0] === 0xff && b[1] === 0xfe))) return "utf-16";
    if (n >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) return "utf-8-sig";
    if (n >= 4) {
      if (!b[0]) return b[1] ? "utf-16-be" : "utf-32-be";
      if (!b[1]) return b[2] || b[3] ? "utf-16-le" : "utf-32-le";
    } else if (n === 2) {
      if (!b[0]) return "utf-16-be";
      if (!b[1]) return "utf-16-le";
    }
    return "utf-8";
  }

  function decodeError(codec, bytes, start, end, why) {
    const where = end - start === 1
      ? `byte 0x${bytes[start].toString(16).padStart(2, "0")} in position ${start}`
      : `bytes in position ${start}-${end - 1}`;
    return new PyError(`'${codec}' codec can't decode ${where}: ${why}`);
  }

  const isCont = (c) => c !== undefined && (c & 0xc0) === 0x80;

  /** CPython's UTF-8 decoder with errors='surrogatepass': its error ranges and messages exactly. */
  function decodeUtf8(b, codec) {
    try {
      return strictUtf8.decode(b);
    } catch (_) { /* invalid somewhere: decode as CPython does, to report what it reports */ }
    const out = [];
    const n = b.length;
    let i = 0;
    while (i < n) {
      const c = b[i];
      if (c < 0x80) { out.push(c); i++; continue; }
      let size = 0;   // bytes of a valid sequence, or 0
      let bad = 0;    // error length (invalid continuation), -1 end of data, -2 invalid start
      if (c < 0xc2) bad = -2;
      else if (c < 0xe0) {
        if (n - i < 2) bad = -1; else if (!isCont(b[i + 1])) bad = 1; else size = 2;
      } else if (c < 0xf0) {
        const c2 = b[i + 1];
        const c2ok = isCont(c2) && !(c === 0xe0 ? c2 < 0xa0 : c === 0xed && c2 >= 0xa0);
        if (n - i < 3) bad = n - i < 2 ? -1 : c2ok ? -1 : 1;
        else if (!c2ok) bad = 1; else if (!isCont(b[i + 2])) bad = 2; else size = 3;
      } else if (c < 0xf5) {
        const c2 = b[i + 1];
        const c2ok = isCont(c2) && !(c === 0xf0 ? c2 < 0x90 : c === 0xf4 && c2 >= 0x90);
        if (n - i < 4) {
          if (n - i < 2) bad = -1; else if (!c2ok) bad = 1;
          else if (n - i < 3) bad = -1; else bad = isCont(b[i + 2]) ? -1 : 2;
        } else if (!c2ok) bad = 1; else if (!isCont(b[i + 2])) bad = 2;
        else if (!isCont(b[i + 3])) bad = 3; else size = 4;
      } else bad = -2;
      if (size) {
        let cp = size === 2 ? c & 0x1f : size === 3 ? c & 0x0f : c & 0x07;
        for (let k = 1; k < size; k++) cp = (cp << 6) | (b[i + k] & 0x3f);
        out.push(cp);
        i += size;
        continue;
      }
      // surrogatepass: an encoded surrogate (ED A0..BF 80..BF) decodes to the lone surrogate
      if ((c & 0xf0) === 0xe0 && isCont(b[i + 1]) && isCont(b[i + 2])) {
        const cp = ((c & 0x0f) << 12) | ((b[i + 1] & 0x3f) << 6) | (b[i + 2] & 0x3f);
        if (cp >= 0xd800 && cp <= 0xdfff) { out.push(cp); i += 3; continue; }
      }
      if (bad === -2) throw decodeError(codec, b, i, i + 1, "invalid start byte");
      if (bad === -1) throw decodeError(codec, b, i, n, "unexpected end of data");
      throw decodeError(codec, b, i, i + bad, "invalid continuation byte");
    }
    let text = "";
    for (let k = 0; k < out.length; k += 4096) text += String.fromCodePoint(...out.slice(k, k + 4096));
    return text;
  }

  /** UTF-16 and UTF-32 (a line starting with NUL bytes or their BOM), errors='surrogatepass'. */
  function decodeWide(b, encoding) {
    const width = encoding.startsWith("utf-32") ? 4 : 2;
    let little = encoding.endsWith("-le");
    let i = 0;
    if (encoding === "utf-16" || encoding === "utf-32") {
      little = b[0] === 0xff;
      i = width;
    }
    const units = [];
    for (; i + width <= b.length; i += width) {
      if (width === 2) units.push(little ? b[i] | (b[i + 1] << 8) : (b[i] << 8) | b[i + 1]);
      else {
        const cp = little ? (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16)) + b[i + 3] * 2 ** 24
          : b[i] * 2 ** 24 + ((b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]);
        if (cp > 0x10ffff) throw decodeError(encoding, b, i, i + 4, "code point not in range(0x110000)");
        units.push(cp);
      }
    }
    if (i < b.length) throw decodeError(encoding, b, i, b.length, "truncated data");
    if (width === 4) return units.map((cp) => String.fromCodePoint(cp)).join("");
    let text = "";
    for (let k = 0; k < units.length; k++) text += String.fromCharCode(units[k]);
    return text;
  }

  /** The text json.loads decodes a line's bytes to. */
  function decodeLine(bytes, encoding) {
    if (encoding === "utf-8") return decodeUtf8(bytes, "utf-8");
    if (encoding === "utf-8-sig") return decodeUtf8(bytes.subarray(3), "utf-8");
    return decodeWide(bytes, encoding);
  }

  // ---- json.loads (CPython's C scanner, strict=True): values and error messages ----

  function codePoints(text, end) {
    let count = 0;
    for (let i = 0; i < end; i++) {
      const c = text.charCodeAt(i);
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < end) {
        const d = text.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) i++;
      }
      count++;
    }
    return count;
  }

  function jsonError(msg, text, pos) {
    const before = text.slice(0, pos);
    const cpPos = codePoints(text, pos);
    const lastNl = before.lastIndexOf("\n");
    const lineno = before.split("\n").length;
    const colno = cpPos - (lastNl < 0 ? -1 : codePoints(text, lastNl));
    return new PyError(`${msg}: line ${lineno} column ${colno} (char ${cpPos})`);
  }

  const ESCAPES = { 34: '"', 92: "\\", 47: "/", 98: "\b", 102: "\f", 110: "\n", 114: "\r", 116: "\t" };
  const isDigit = (c) => c >= 48 && c <= 57;

  function hex4(text, at) {
    let value = 0;
    for (let k = 0; k < 4; k++) {
      const c = text.charCodeAt(at + k);
      const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
      if (d < 0) return -1;
      value = value * 16 + d;
    }
    return value;
  }

  /** Parse one line's text. Returns {value, strict, deep}: strict is false when orjson would refuse
   * the line (NaN/Infinity, a lone surrogate), and the stdlib's reading is the one verify uses; deep is
   * the stdlib's RecursionError text when the value nests that deep (orjson may still read it). */
  function pyLoads(text) {
    const n = text.length;
    let strict = true;
    let deep = null;
    const fail = (msg, pos) => { throw deep ?? jsonError(msg, text, pos); };
    const enter = (depth, kind) => {
      if (depth === STDLIB_DEPTH && deep === null) {
        deep = new PyError(`maximum recursion depth exceeded while decoding a JSON ${kind} from a unicode string`);
      }
      if (depth > ORJSON_DEPTH) throw deep;
    };
    const ws = (i) => {
      for (; i < n; i++) {
        const c = text.charCodeAt(i);
        if (c !== 32 && c !== 9 && c !== 10 && c !== 13) break;
      }
      return i;
    };

    function scanString(start) {
      let end = start;
      let out = "";
      for (;;) {
        let next = end;
        let c = -1;
        for (; next < n; next++) {
          c = text.charCodeAt(next);
          if (c === 34 || c === 92) break;
          if (c <= 0x1f) fail("Invalid control character at", next);
        }
        if (next >= n) fail("Unterminated string starting at", start - 1);
        out += text.slice(end, next);
        next++;
        if (c === 34) return [out, next];
        if (next === n) fail("Unterminated string starting at", start - 1);
        c = text.charCodeAt(next);
        if (c !== 117) {
          end = next + 1;
          const esc = ESCAPES[c];
          if (esc === undefined) fail("Invalid \\escape", end - 2);
          out += esc;
          continue;
        }
        next++;
        end = next + 4;
        if (end >= n) fail("Invalid \\uXXXX escape", next - 1);
        const u = hex4(text, next);
        if (u < 0) fail("Invalid \\uXXXX escape", end - 5);
        if (u >= 0xd800 && u <= 0xdbff && end + 6 < n && text.charCodeAt(end) === 92 && text.charCodeAt(end + 1) === 117) {
          const u2 = hex4(text, end + 2);
          if (u2 < 0) fail("Invalid \\uXXXX escape", end + 1);
          if (u2 >= 0xdc00 && u2 <= 0xdfff) {
            out += String.fromCharCode(u, u2);
            end += 6;
            continue;
          }
        }
        if (u >= 0xd800 && u <= 0xdfff) strict = false;
        out += String.fromCharCode(u);
      }
    }

    function matchNumber(start) {
      let idx = start;
      if (text.charCodeAt(idx) === 45) {
        idx++;
        if (idx >= n) fail("Expecting value", start);
      }
      const c = text.charCodeAt(idx);
      if (c >= 49 && c <= 57) {
        idx++;
        while (idx < n && isDigit(text.charCodeAt(idx))) idx++;
      } else if (c === 48) idx++;
      else fail("Expecting value", start);
      let isFloat = false;
      if (idx < n - 1 && text.charCodeAt(idx) === 46 && isDigit(text.charCodeAt(idx + 1))) {
        isFloat = true;
        idx += 2;
        while (idx < n && isDigit(text.charCodeAt(idx))) idx++;
      }
      if (idx < n - 1 && (text.charCodeAt(idx) === 101 || text.charCodeAt(idx) === 69)) {
        const eStart = idx;
        idx++;
        if (idx < n - 1 && (text.charCodeAt(idx) === 45 || text.charCodeAt(idx) === 43)) idx++;
        while (idx < n && isDigit(text.charCodeAt(idx))) idx++;
        if (isDigit(text.charCodeAt(idx - 1))) isFloat = true; else idx = eStart;
      }
      const literal = text.slice(start, idx);
      return [isFloat ? new PyFloat(literal) : BigInt(literal), idx];
    }

    function scan(idx, depth) {
      if (idx >= n) fail("Expecting value", idx);
      switch (text.charCodeAt(idx)) {
        case 34: return scanString(idx + 1);
        case 123: return parseObject(idx + 1, depth + 1);
        case 91: return parseArray(idx + 1, depth + 1);
        case 110: if (text.startsWith("null", idx)) return [null, idx + 4]; break;
        case 116: if (text.startsWith("true", idx)) return [true, idx + 4]; break;
        case 102: if (text.startsWith("false", idx)) return [false, idx + 5]; break;
        case 78: if (text.startsWith("NaN", idx)) { strict = false; return [new PyFloat("NaN"), idx + 3]; } break;
        case 73: if (text.startsWith("Infinity", idx)) { strict = false; return [new PyFloat("Infinity"), idx + 8]; } break;
        case 45: if (text.startsWith("-Infinity", idx)) { strict = false; return [new PyFloat("-Infinity"), idx + 9]; } break;
        default: break;
      }
      return matchNumber(idx);
    }

    function parseObject(start, depth) {
      enter(depth, "object");
      const obj = new Map();
      let idx = ws(start);
      if (idx >= n || text.charCodeAt(idx) !== 125) {
        for (;;) {
          if (idx >= n || text.charCodeAt(idx) !== 34) fail("Expecting property name enclosed in double quotes", idx);
          let key;
          [key, idx] = scanString(idx + 1);
          idx = ws(idx);
          if (idx >= n || text.charCodeAt(idx) !== 58) fail("Expecting ':' delimiter", idx);
          let value;
          [value, idx] = scan(ws(idx + 1), depth);
          obj.set(key, value);
          idx = ws(idx);
          if (idx < n && text.charCodeAt(idx) === 125) break;
          if (idx >= n || text.charCodeAt(idx) !== 44) fail("Expecting ',' delimiter", idx);
          idx = ws(idx + 1);
        }
      }
      return [obj, idx + 1];
    }

    function parseArray(start, depth) {
      enter(depth, "array");
      const arr = [];
      let idx = ws(start);
      if (idx >= n || text.charCodeAt(idx) !== 93) {
        for (;;) {
          let value;
          [value, idx] = scan(idx, depth);
          arr.push(value);
          idx = ws(idx);
          if (idx < n && text.charCodeAt(idx) === 93) break;
          if (idx >= n || text.charCodeAt(idx) !== 44) fail("Expecting ',' delimiter", idx);
          idx = ws(idx + 1);
        }
      }
      return [arr, idx + 1];
    }

    const [value, end] = scan(ws(0), 0);
    const rest = ws(end);
    if (rest !== n) fail("Extra data", rest);
    return { value, strict, deep: deep && deep.message };
  }

  /** A line's bytes as verify reads them (orjson, else the stdlib): {value, strict}, strict false
   * when orjson refuses the line (another encoding, a BOM, a lone surrogate, NaN) and the stdlib reads it. */
  function parseLine(bytes) {
    const encoding = detectEncoding(bytes);
    const text = decodeLine(bytes, encoding);
    const parsed = pyLoads(text);
    if (encoding !== "utf-8" || (/[\ud800-\udfff]/.test(text) && hasLoneSurrogate(text))) parsed.strict = false;
    if (parsed.deep !== null && !parsed.strict) throw new PyError(parsed.deep);
    return parsed;
  }

  // ---- RFC 8785 canonical form (receipts/canonical.py), with its error messages ----

  function hasLoneSurrogate(s) {
    return /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
  }

  const isAscii = (s) => /^[\x00-\x7f]*$/.test(s);

  /** Check types in canonical.py's order (an explicit stack: the last value is looked at first);
   * true when no object's keys could sort differently by code point and by UTF-16 unit. */
  function checkTypes(value) {
    let safe = true;
    const stack = [value];
    while (stack.length) {
      const item = stack.pop();
      if (typeof item === "string" || typeof item === "boolean" || item === null) continue;
      if (typeof item === "bigint") {
        if (item > MAX_SAFE || item < -MAX_SAFE) {
          throw new PyError(`integer ${item} is outside the JSON-safe range +-(2**53-1) that RFC 8785 allows`);
        }
        continue;
      }
      if (item instanceof Map) {
        let highBmp = false;
        let astral = false;
        for (const [key, child] of item) {
          if (!isAscii(key)) {
            highBmp = highBmp || /[\ue000-\uffff]/.test(key);
            astral = astral || /[\ud800-\udbff][\udc00-\udfff]/.test(key);
          }
          stack.push(child);
        }
        if (highBmp && astral) safe = false;
      } else if (Array.isArray(item)) {
        for (const child of item) stack.push(child);
      } else {
        throw new PyError(`receipts hold only str, int, bool, None, list and dict; got ${item instanceof PyFloat ? "float" : typeof item}`);
      }
    }
    return safe;
  }

  function quote(s) {
    return '"' + s.replace(/["\\\u0000-\u001f]/g, (c) => {
      switch (c) {
        case '"': return '\\"';
        case "\\": return "\\\\";
        case "\b": return "\\b";
        case "\t": return "\\t";
        case "\n": return "\\n";
        case "\f": return "\\f";
        case "\r": return "\\r";
        default: return "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0");
      }
    }) + '"';
  }

  /** JSON text of a parsed value, keys sorted (canonical for the values canonicalText accepts). */
  function serialize(value) {
    if (typeof value === "string") return quote(value);
    if (typeof value === "bigint") return value.toString();
    if (value === true) return "true";
    if (value === false) return "false";
    if (value === null) return "null";
    if (value instanceof PyFloat) return value.text;
    if (Array.isArray(value)) return "[" + value.map(serialize).join(",") + "]";
    const keys = [...value.keys()].sort();  // UTF-16 code unit order, as RFC 8785 sorts
    return "{" + keys.map((k) => quote(k) + ":" + serialize(value.get(k))).join(",") + "}";
  }

  /** The canonical text of a receipt-shaped value; PyError with canonical.py's message otherwise. */
  function canonicalText(value) {
    const safe = checkTypes(value);
    const text = serialize(value);
    if (hasLoneSurrogate(text)) {
      if (!safe) throw new PyError("input contains non-UTF-8 codepoints");
      const chars = Array.from(text);
      const isSur = (ch) => ch.length === 1 && ch.charCodeAt(0) >= 0xd800 && ch.charCodeAt(0) <= 0xdfff;
      const start = chars.findIndex(isSur);
      let end = start;
      while (end < chars.length && isSur(chars[end])) end++;
      const where = end - start === 1
        ? `character '\\u${chars[start].charCodeAt(0).toString(16)}' in position ${start}`
        : `characters in position ${start}-${end - 1}`;
      throw new PyError(`'utf-8' codec can't encode ${where}: surrogates not allowed`);
    }
    return text;
  }

  /** The RFC 8785 bytes of a value (strings, BigInt integers, booleans, null, arrays, Maps). */
  function canonicalJson(value) {
    return encoder.encode(canonicalText(value));
  }

  // ---- Python's repr/str and ==, for the reason texts that quote receipt values ----

  const NONPRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;
  const isPrintable = (ch) => ch === " " || !NONPRINTABLE.test(ch);

  function hexEscape(cp) {
    if (cp <= 0xff) return "\\x" + cp.toString(16).padStart(2, "0");
    if (cp <= 0xffff) return "\\u" + cp.toString(16).padStart(4, "0");
    return "\\U" + cp.toString(16).padStart(8, "0");
  }

  function reprString(s) {
    const q = s.includes("'") && !s.includes('"') ? '"' : "'";
    let out = q;
    for (const ch of s) {
      const cp = ch.codePointAt(0);
      if (ch === q || ch === "\\") out += "\\" + ch;
      else if (ch === "\t") out += "\\t";
      else if (ch === "\n") out += "\\n";
      else if (ch === "\r") out += "\\r";
      else if (cp < 0x20 || cp === 0x7f) out += hexEscape(cp);
      else if (cp < 0x7f || isPrintable(ch)) out += ch;
      else out += hexEscape(cp);
    }
    return out + q;
  }

  function pyRepr(value) {
    if (value === undefined || value === null) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "bigint") return value.toString();
    if (typeof value === "string") return reprString(value);
    if (value instanceof PyFloat) return value.text;
    if (Array.isArray(value)) return "[" + value.map(pyRepr).join(", ") + "]";
    return "{" + [...value].map(([k, v]) => reprString(k) + ": " + pyRepr(v)).join(", ") + "}";
  }

  const pyStr = (value) => (typeof value === "string" ? value : pyRepr(value));

  /** Python's == on parsed values (True == 1, dicts compare unordered). */
  function pyEq(a, b) {
    const num = (x) => (typeof x === "boolean" ? BigInt(x) : x);
    a = num(a === undefined ? null : a);
    b = num(b === undefined ? null : b);
    if (typeof a === "bigint" || typeof b === "bigint" || typeof a === "string" || a === null) return a === b;
    if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => pyEq(x, b[i]));
    if (a instanceof Map) {
      return b instanceof Map && a.size === b.size && [...a].every(([k, v]) => b.has(k) && pyEq(v, b.get(k)));
    }
    return false;
  }

  /** ledger/report.py printable(): control and other non-printable characters shown escaped. */
  function printable(text) {
    let out = "";
    for (const ch of text) {
      if (isPrintable(ch)) { out += ch; continue; }
      const cp = ch.codePointAt(0);
      out += ch === "\t" ? "\\t" : ch === "\n" ? "\\n" : ch === "\r" ? "\\r" : hexEscape(cp);
    }
    return out;
  }

  // ---- base64, hex, keys ----

  function base64Decode(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function base64Encode(bytes) {
    let bin = "";
    for (let i = 0; i < bytes.length; i += 8192) bin += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return btoa(bin);
  }

  /** The signature bytes when ``sig`` is the one standard padded base64 spelling of some bytes. */
  function signatureBytes(sig) {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(sig) || sig.length % 4 !== 0) return null;
    let bytes;
    try { bytes = base64Decode(sig); } catch (_) { return null; }
    return base64Encode(bytes) === sig ? bytes : null;
  }

  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  const SPKI_ED25519 = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
  const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g;

  // SubjectPublicKeyInfo algorithm OIDs (hex) -> the key class cryptography names in its refusal.
  const KEY_TYPES = { "2a864886f70d010101": "RSAPublicKey", "2a8648ce3d0201": "ECPublicKey",
    "2a8648ce380401": "DSAPublicKey", "2b6571": "Ed448PublicKey", "2b656e": "X25519PublicKey",
    "2b656f": "X448PublicKey" };

  /** The algorithm OID of a DER SubjectPublicKeyInfo (hex), or "" when it is not one. */
  function spkiAlgorithm(der) {
    let at = 0;
    const header = (tag) => {
      if (der[at] !== tag) throw new Error("tag");
      let length = der[at + 1];
      at += 2;
      if (length & 0x80) {
        const count = length & 0x7f;
        length = 0;
        for (let k = 0; k < count; k++) length = length * 256 + der[at++];
      }
      if (at + length > der.length) throw new Error("length");
      return length;
    };
    try {
      header(0x30);
      header(0x30);
      const length = header(0x06);
      return hex(der.subarray(at, at + length));
    } catch (_) {
      return "";
    }
  }

  function describe(bytes) {
    if (!bytes.length) return "an empty file";
    let text;
    try { text = strictUtf8.decode(bytes); } catch (_) { return `${bytes.length} bytes of binary data`; }
    const chars = Array.from(text);
    if (chars.every((c) => isPrintable(c) || c === "\r" || c === "\n" || c === "\t")) return `${chars.length} characters of text`;
    return `${bytes.length} bytes of binary data`;
  }

  function onlyComments(name, latin, start, end) {
    let offset = start;
    // bytes.splitlines(keepends=True) and bytes.strip(): \n, \r and \r\n end lines; ASCII white space only.
    for (const line of latin.slice(start, end).match(/[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$/g) || []) {
      const text = line.replace(/^[ \t\n\r\v\f]+|[ \t\n\r\v\f]+$/g, "");
      if (text && !text.startsWith("#")) {
        const lineNo = latin.slice(0, offset).split("\n").length;
        throw new ConfigError(`${name}:${lineNo}: unexpected text outside a PEM block ` +
          "(a keys file holds PEM PUBLIC KEY blocks, blank lines and # comments)");
      }
      offset += line.length;
    }
  }

  async function readBytes(source) {
    if (source instanceof Uint8Array) return source;
    if (source.bytes instanceof Uint8Array) return source.bytes;
    return new Uint8Array(await source.arrayBuffer());
  }

  /** Trusted keys from keys files (keys.py load_public_keys): Map key id -> {raw, key}. */
  async function loadKeys(sources) {
    const keys = new Map();
    for (const source of sources) {
      const name = source.name;
      const data = await readBytes(source);
      if (data.length > MAX_KEY_FILE) throw new ConfigError(`${name}: not a key file (larger than ${MAX_KEY_FILE} bytes)`);
      const latin = Array.from(data, (b) => String.fromCharCode(b)).join("");
      if (data.length === 32 || /^[0-9a-fA-F]{64}(\r?\n)?$/.test(latin)) {
        throw new ConfigError(`${name}: looks like a raw private key seed; only PEM public keys are trusted`);
      }
      const blocks = [...latin.matchAll(PEM_BLOCK)];
      if (!blocks.length) throw new ConfigError(`${name}: no PEM PUBLIC KEY block found; found ${describe(data)}`);
      let end = 0;
      for (const block of blocks) {
        onlyComments(name, latin, end, block.index);
        end = block.index + block[0].length;
        const label = block[1];
        if (label.includes("PRIVATE")) {
          throw new ConfigError(`${name}: holds a private key (${label}); give verify the public key ` +
            "(the .pub file) — only public keys are trusted");
        }
        if (label !== "PUBLIC KEY") throw new ConfigError(`${name}: found a PEM ${label} block; expected PUBLIC KEY blocks`);
        let der;
        try { der = base64Decode(block[2].replace(/\s+/g, "")); } catch (_) {
          throw new ConfigError(`${name}: unreadable PUBLIC KEY block: invalid base64`);
        }
        if (der.length !== 44 || SPKI_ED25519.some((b, i) => der[i] !== b)) {
          const other = KEY_TYPES[spkiAlgorithm(der)];
          throw new ConfigError(other ? `${name}: found a non-Ed25519 key (${other}); expected Ed25519`
            : `${name}: unreadable PUBLIC KEY block: not an Ed25519 SubjectPublicKeyInfo`);
        }
        const raw = der.slice(12);
        const keyId = "ed25519:" + hex(await sha256(raw)).slice(0, 16);
        const known = keys.get(keyId);
        if (known && hex(known.raw) !== hex(raw)) throw new ConfigError(`${name}: two different public keys share key id ${keyId}`);
        if (!known) {
          const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
          keys.set(keyId, { raw, key });
        }
      }
      onlyComments(name, latin, end, latin.length);
    }
    return keys;
  }

  /** Expected heads from CHAIN=HASH items (the CLI's --expect-head): Map chain -> hash. */
  function parseExpectHeads(items) {
    if (items instanceof Map) return items;
    if (!Array.isArray(items)) return new Map(Object.entries(items || {}));
    const expect = new Map();
    for (const item of items) {
      const at = item.lastIndexOf("=");
      const chain = item.slice(0, Math.max(at, 0));
      const head = item.slice(at + 1);
      if (at < 0 || !chain || !head) throw new ConfigError(`--expect-head takes CHAIN=HASH, got ${reprString(item)}`);
      expect.set(chain, head);
    }
    return expect;
  }

  // ---- the checks (verify.py _Checker) ----

  function lineOf(unsigned, claimed, sig) {
    const tail = encoder.encode(`,"hash":"${claimed}","sig":"${sig}"}\n`);
    const line = new Uint8Array(unsigned.length - 1 + tail.length);
    line.set(unsigned.subarray(0, unsigned.length - 1));
    line.set(tail, unsigned.length - 1);
    return line;
  }

  function sameBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  /** What is wrong with one receipt on its own (hash, key, signature, bytes, fields), or null. The
   * receipt is a Map with its seal already removed. */
  async function receiptProblem(receipt, claimed, sig, chain, keys, raw, deep) {
    const keyId = receipt.get("key_id");
    if (typeof claimed !== "string" || typeof sig !== "string" || typeof keyId !== "string") {
      return "malformed receipt: hash, sig and key_id must be strings";
    }
    // Nested past orjson's serializer, the value is re-read from the line by json.loads, which recurses too deep.
    if (deep) return `malformed receipt: ${deep}`;
    let unsigned;
    try {
      unsigned = canonicalJson(receipt);
    } catch (exc) {
      if (exc instanceof PyError) return `malformed receipt: ${exc.message}`;
      throw exc;
    }
    const digest = await sha256(unsigned);
    if (hex(digest) !== claimed) return "hash mismatch: the receipt was edited";
    const trusted = keys.get(keyId);
    if (trusted === undefined) return `untrusted key ${keyId}`;
    const signature = signatureBytes(sig);
    if (signature === null || signature.length !== 64 ||
        !(await crypto.subtle.verify({ name: "Ed25519" }, trusted.key, signature, digest))) {
      return "bad signature";
    }
    if (raw !== null && !sameBytes(lineOf(unsigned, claimed, sig), raw)) {
      return "edited line: its bytes are not the serialization of the signed receipt";
    }
    const kind = receipt.get("kind");
    if (!pyEq(receipt.get("v"), 1n) || !(typeof kind === "string" && KINDS.has(kind))) {
      return `malformed receipt: unsupported version ${pyRepr(receipt.get("v"))} or kind ${pyRepr(kind)}`;
    }
    if (typeof receipt.get("ts") !== "string") return "malformed receipt: ts must be a string";
    if (!chain.startsWith(keyId + ":")) return `key_id ${keyId} does not match chain`;
    return null;
  }

  function linkProblem(receipt, seq, state) {
    const prev = receipt.get("prev");
    if (state.receipts === 1) {
      if (seq !== 0n) return `missing start: chain begins at seq ${seq}`;
      if (prev !== ZERO_HASH) return "broken link: seq 0 must have prev of 64 zeros";
    } else if (seq !== state.seq + 1n) {
      return `out of order: seq ${seq} follows seq ${state.seq} (receipt missing, reordered or repeated)`;
    } else if (prev !== state.hash) {
      return `broken link: prev is not the hash of seq ${state.seq}`;
    }
    if (receipt.get("kind") === "checkpoint") {
      const head = new Map([["seq", seq - 1n], ["hash", prev]]);
      const count = BigInt(state.counted);
      if (!pyEq(receipt.get("head"), head) || !pyEq(receipt.get("count"), count)) {
        return `bad checkpoint: expected head ${pyRepr(head)} and count ${count}, ` +
          `found ${pyStr(receipt.get("head"))} and ${pyStr(receipt.get("count"))}`;
      }
    }
    return null;
  }

  /** seq as verify reads it: an integer (orjson reads integers past 64 bits as floats). */
  function seqOf(receipt, strict) {
    const seq = receipt.get("seq");
    if (typeof seq !== "bigint") return null;
    return strict && (seq < I64_MIN || seq > U64_MAX) ? null : seq;
  }

  class Checker {
    constructor(keys, expect) {
      this.keys = keys;
      this.expect = expect;
      this.chains = new Map();
      this.receipts = 0;
      this.firstError = null;
      this.torn = [];
    }

    fail(file, line, chain, seq, reason) {
      if (this.firstError === null) this.firstError = { file, line, chain, seq, reason };
    }

    tornLine(file, line) {
      this.torn.push([file, line]);
      this.fail(file, line, null, null, "torn last line");
    }

    /** Start the checks of one receipt that need no chain state (hash, key, signature, bytes, fields):
     * a batch of receipts is hashed and verified concurrently, then ``apply`` takes them in order. */
    prepare(receipt, strict, raw, deep) {
      const isObject = receipt instanceof Map;
      const chain = isObject ? receipt.get("chain") : null;
      const seq = isObject ? seqOf(receipt, strict) : null;
      if (typeof chain !== "string" || seq === null) return { chain: typeof chain === "string" ? chain : null, seq: null };
      const claimed = receipt.has("hash") ? receipt.get("hash") : null;
      const sig = receipt.has("sig") ? receipt.get("sig") : null;
      receipt.delete("hash");
      receipt.delete("sig");
      const entry = { receipt, chain, seq, claimed, sig, reason: null };
      entry.done = receiptProblem(receipt, claimed, sig, chain, this.keys, raw, deep).then((reason) => {
        entry.reason = reason;
      });
      return entry;
    }

    /** Check a prepared receipt (its ``done`` settled) against its chain so far. */
    apply(entry, file, line) {
      const { receipt, chain, seq, claimed } = entry;
      if (seq === null) {
        this.fail(file, line, chain, null, "malformed receipt: not an object with a string chain and an integer seq");
        return;
      }
      let state = this.chains.get(chain);
      if (state === undefined) {
        state = { seq: -1n, hash: ZERO_HASH, receipts: 0, counted: 0, file: null, line: 0, reached: false };
        this.chains.set(chain, state);
      }
      this.receipts++;
      state.receipts++;
      const reason = entry.reason ?? linkProblem(receipt, seq, state);
      if (reason !== null) this.fail(file, line, chain, seq, reason);
      // Follow the receipt's own claims so one bad receipt is reported once, not at every later one.
      state.seq = seq;
      state.hash = typeof claimed === "string" ? claimed : "";
      state.file = file;
      state.line = line;
      if (receipt.get("kind") !== "checkpoint") state.counted++;
      state.reached = state.reached || (this.expect.has(chain) && this.expect.get(chain) === claimed);
    }

    report() {
      for (const [chain, expected] of this.expect) {
        const state = this.chains.get(chain);
        if (state === undefined) this.fail(null, null, chain, null, `missing chain: no receipts found, expected head ${expected}`);
        else if (!state.reached) {
          this.fail(state.file, state.line, chain, state.seq, `truncated: head is ${state.seq} ${state.hash}, expected ${expected}`);
        }
      }
      const chains = {};
      for (const [chain, s] of this.chains) chains[chain] = { seq: Number(s.seq), hash: s.hash, receipts: s.receipts };
      const report = { ok: this.firstError === null, receipts: this.receipts, chains,
        first_error: this.firstError, torn: this.torn.map(([file, line]) => ({ file, line })) };
      report.lines = summaryLines(report, this.chains);
      report.verdict = report.lines[report.lines.length - 1];
      return report;
    }
  }

  const show = (value) => (value === null || value === undefined ? "None" : String(value));

  /** The lines `agentguard verify` prints for this report (its last line is the verdict). */
  function summaryLines(report, states) {
    const lines = [`receipts checked: ${report.receipts} in ${states.size} chain(s)`];
    const names = [...states.keys()].sort(byCodePoint);
    for (const chain of names) {
      const s = states.get(chain);
      lines.push(printable(`  ${chain}: ${s.receipts} receipts, head seq ${s.seq} ${s.hash}`));
    }
    for (const { file, line } of report.torn) lines.push(printable(`TORN LINE: ${file}:${line} (an append was interrupted)`));
    const err = report.first_error;
    lines.push(err === null ? "OK: every receipt verifies against the trusted keys"
      : printable(`FAILED: ${show(err.file)}:${show(err.line)} chain ${show(err.chain)} seq ${show(err.seq)}: ${err.reason}`));
    return lines;
  }

  function byCodePoint(a, b) {
    const x = Array.from(a, (c) => c.codePointAt(0));
    const y = Array.from(b, (c) => c.codePointAt(0));
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  }

  /** Files in verify's order: by chain file stem, then segment number. */
  function segmentOrder(files) {
    const order = (file) => {
      const match = SEGMENT.exec(file.name);
      return match ? [match[1], Number(match[2])] : [file.name, -1];
    };
    return files.map((file) => [order(file), file]).sort(([a], [b]) => byCodePoint(a[0], b[0]) || a[1] - b[1])
      .map(([, file]) => file);
  }

  const pause = () => new Promise((resolve) => setTimeout(resolve, 0));

  /** Lines of a file, newline kept, read in chunks (memory does not grow with the log). */
  async function* fileLines(source) {
    if (source.bytes instanceof Uint8Array || source instanceof Uint8Array) {
      yield* splitLines(await readBytes(source), true);
      return;
    }
    const reader = source.stream().getReader();
    let pending = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const chunk = pending.length ? concat(pending, value) : value;
      const last = chunk.lastIndexOf(10);
      if (last < 0) { pending = chunk; continue; }
      yield* splitLines(chunk.subarray(0, last + 1), false);
      pending = chunk.slice(last + 1);
    }
    if (pending.length) yield pending;
  }

  function* splitLines(bytes, final) {
    let start = 0;
    for (;;) {
      const end = bytes.indexOf(10, start);
      if (end < 0) break;
      yield bytes.subarray(start, end + 1);
      start = end + 1;
    }
    if (final && start < bytes.length) yield bytes.subarray(start);
  }

  function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
  }

  const sizeOf = (source) => (source.bytes instanceof Uint8Array ? source.bytes.length : source.size);

  /** Verify receipt segment files (File objects, or {name, bytes}) against trusted keys (loadKeys),
   * with optional expected heads (Map, object or CHAIN=HASH strings). ``onProgress(done, total)``
   * gets byte counts as the files are checked; the UI stays responsive on large logs. Returns the
   * report of verify.py (ok, receipts, chains, first_error, torn) plus ``lines`` and ``verdict``, the
   * text `agentguard verify` prints. ``first_error.seq`` is a BigInt (exact); ``chains[c].seq`` a Number. */
  async function verifyLog(files, keys, expectHeads, onProgress) {
    const ordered = segmentOrder([...files]);
    const total = ordered.reduce((sum, file) => sum + sizeOf(file), 0);
    const checker = new Checker(keys, parseExpectHeads(expectHeads));
    const progress = onProgress || (() => {});
    let done = 0;
    let lastPause = performance.now();
    let batch = [];  // [file, line, prepared receipt | reason of an unreadable line]
    const flush = async () => {
      await Promise.all(batch.map(([, , item]) => item.done));
      for (const [file, line, item] of batch) {
        if (typeof item === "string") checker.fail(file, line, null, null, item);
        else checker.apply(item, file, line);
      }
      batch = [];
    };
    progress(0, total);
    for (const file of ordered) {
      let lineNo = 0;
      for await (const raw of fileLines(file)) {
        lineNo++;
        done += raw.length;
        if (raw[raw.length - 1] !== 10) {
          await flush();
          checker.tornLine(file.name, lineNo);
          continue;
        }
        let item;
        try {
          const parsed = parseLine(raw);
          item = checker.prepare(parsed.value, parsed.strict, raw, parsed.deep);
        } catch (exc) {
          if (!(exc instanceof PyError)) throw exc;
          item = `malformed line: ${exc.message}`;
        }
        batch.push([file.name, lineNo, item]);
        if (batch.length >= BATCH) await flush();
        if (performance.now() - lastPause > YIELD_MS) {
          progress(done, total);
          await pause();
          lastPause = performance.now();
        }
      }
    }
    await flush();
    progress(total, total);
    return checker.report();
  }

  /** Check one receipt line (bytes or text; its newline optional) on its own: hash, trusted key,
   * signature, exact bytes and fields, as verify checks each receipt (its chain links need the log).
   * Returns {ok, reason, receipt} where receipt is the parsed Map (null if unreadable). */
  async function verifyReceiptLine(line, keys) {
    let raw = typeof line === "string" ? encoder.encode(line) : line;
    if (raw[raw.length - 1] !== 10) raw = concat(raw, new Uint8Array([10]));
    let parsed;
    try {
      parsed = parseLine(raw);
    } catch (exc) {
      if (!(exc instanceof PyError)) throw exc;
      return { ok: false, reason: `malformed line: ${exc.message}`, receipt: null };
    }
    const receipt = parsed.value;
    const chain = receipt instanceof Map ? receipt.get("chain") : null;
    if (typeof chain !== "string" || seqOf(receipt, parsed.strict) === null) {
      return { ok: false, reason: "malformed receipt: not an object with a string chain and an integer seq", receipt: null };
    }
    const fields = new Map(receipt);
    const claimed = receipt.has("hash") ? receipt.get("hash") : null;
    const sig = receipt.has("sig") ? receipt.get("sig") : null;
    receipt.delete("hash");
    receipt.delete("sig");
    const reason = await receiptProblem(receipt, claimed, sig, chain, keys, raw, parsed.deep);
    return { ok: reason === null, reason: reason ?? "hash and signature verify against a trusted key", receipt: fields };
  }

  root.AgentGuardVerify = {
    verifyLog, verifyReceiptLine, loadKeys, parseExpectHeads, canonicalJson, canonicalText, parseLine, jsonText: serialize,
    pyRepr, printable, base64Decode, ConfigError, PyFloat,
  };
})(globalThis);
