// src/schema.ts is what openapi-typescript makes of the document the server
// binary serves today: a change to the API that was not regenerated fails
// here, naming the first line that differs.

import assert from "node:assert/strict";
import { test } from "node:test";
import { committedSchema, generateSchema } from "../scripts/generate.js";
import { serverUnavailable } from "./server.js";

test("src/schema.ts is fresh: npm run generate would not change it", { skip: serverUnavailable() }, async () => {
  const fresh = await generateSchema();
  const committed = committedSchema();
  if (fresh === committed) {
    return;
  }
  const freshLines = fresh.split("\n");
  const committedLines = committed.split("\n");
  const line = freshLines.findIndex((text, index) => text !== committedLines[index]);
  assert.fail(
    `src/schema.ts differs from a fresh generation from \`bursar openapi\` at line ${line + 1}:\n` +
      `  committed: ${committedLines[line] ?? "(end of file)"}\n` +
      `  fresh:     ${freshLines[line] ?? "(end of file)"}\n` +
      "run `npm run generate` in clients/typescript and commit src/schema.ts",
  );
});
