/**
 * Which variant of a rollout a run gets: sticky, monotone, and the same in every
 * language. docs/rollouts.md specifies it; docs/rollout-assignment-vectors.json holds
 * the test vectors every client checks.
 */
import { createHash } from "node:crypto";

export const BUCKETS = 10_000;

export type Stickiness = "session" | "user" | "tenant";

/**
 * A run's unit key: the first of session, user and the run's own id that its stickiness
 * allows and the run has (a run with neither id is a unit of its own), or its tenant
 * under tenant stickiness.
 */
export function unitKey(
  stickiness: Stickiness,
  run: { tenant: string; user?: string; session?: string; run?: string },
): string {
  if (stickiness === "tenant") return `tenant:${run.tenant}`;
  if (stickiness === "session" && run.session) return `session:${run.session}`;
  if (run.user) return `user:${run.user}`;
  if (run.run) return `run:${run.run}`;
  return `tenant:${run.tenant}`;
}

/** The unit's bucket in a rollout, 0 to 9,999. */
export function bucket(rollout: string, key: string): number {
  const digest = createHash("sha256")
    .update(Buffer.concat([Buffer.from(rollout, "utf8"), Buffer.from([0]), Buffer.from(key, "utf8")]))
    .digest();
  return Number(digest.readBigUInt64BE(0) % BigInt(BUCKETS));
}

/** Whether the unit runs the candidate at `weight` basis points (0 to 10,000). */
export function inCandidate(rollout: string, key: string, weight: number): boolean {
  if (!Number.isInteger(weight) || weight < 0 || weight > BUCKETS) {
    throw new RangeError(`weight ${weight} is not 0 to ${BUCKETS} basis points`);
  }
  return bucket(rollout, key) < weight;
}
