// Parse LogQL expressions with Grafana's LogQL grammar (@grafana/lezer-logql, the one Grafana's
// query editor uses). Input: a JSON array of strings on stdin. Output: a JSON array with, for each
// expression, its top-level node and every syntax error (position and the text around it).
import { parser } from "@grafana/lezer-logql";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const expressions = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const results = expressions.map((expr) => {
  const tree = parser.parse(expr);
  const errors = [];
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push({ from: node.from, to: node.to, near: expr.slice(Math.max(0, node.from - 10), node.to + 10) });
      }
    },
  });
  const top = tree.topNode.firstChild;
  return { expr, top: top ? top.type.name : null, errors };
});
process.stdout.write(JSON.stringify(results));
