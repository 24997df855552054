import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { test } from "node:test";
import { bucket, inCandidate, unitKey, type Stickiness } from "../assignment.js";
import { PROTO_ROOT } from "../index.js";

interface Vectors {
  buckets: { rollout: string; key: string; bucket: number }[];
  keys: {
    stickiness: Stickiness;
    tenant: string;
    user: string;
    session: string;
    run: string;
    key: string;
  }[];
}

const vectors: Vectors = JSON.parse(
  readFileSync(resolve(PROTO_ROOT, "..", "docs", "rollout-assignment-vectors.json"), "utf8"),
);

test("buckets match the documented vectors", () => {
  for (const v of vectors.buckets) {
    assert.equal(bucket(v.rollout, v.key), v.bucket, `${v.rollout} / ${v.key}`);
  }
});

test("unit keys match the documented vectors", () => {
  for (const v of vectors.keys) {
    const run = { tenant: v.tenant, user: v.user, session: v.session, run: v.run };
    assert.equal(unitKey(v.stickiness, run), v.key);
  }
});

test("raising the weight never moves a unit out of the candidate", () => {
  const rollout = "tenants/acme/rollouts/monotone";
  for (let unit = 0; unit < 500; unit++) {
    const key = `session:${unit}`;
    let was = false;
    for (const weight of [0, 500, 2500, 5000, 10000]) {
      const now = inCandidate(rollout, key, weight);
      assert.ok(!was || now, `${key} left the candidate at ${weight}`);
      was = now;
    }
    assert.ok(was, "everyone runs the candidate at 100 %");
  }
  assert.throws(() => inCandidate(rollout, "x", 10001), RangeError);
});
