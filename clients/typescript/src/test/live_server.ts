/** Starts a real Pilothouse control plane (Python) on loopback for the tests. */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { PROTO_ROOT } from "../index.js";

const REPO = resolve(PROTO_ROOT, "..");
const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";

/** A key in the server's format: ph_{12 base32 chars}_{43 base64url chars}. */
export function newApiKey(): string {
  const id = Array.from(randomBytes(12), (b) => BASE32[b % 32]).join("");
  return `ph_${id}_${randomBytes(32).toString("base64url")}`;
}

export interface LiveServer {
  address: string;
  adminKey: string;
  stop(): Promise<void>;
}

export async function startControlPlane(): Promise<LiveServer> {
  const python = process.env.PILOTHOUSE_PYTHON ?? join(REPO, ".venv", "bin", "python");
  const dir = mkdtempSync(join(tmpdir(), "pilothouse-ts-"));
  const adminKey = newApiKey();
  const child: ChildProcess = spawn(
    python,
    ["-m", "controlplane", "serve", "--listen", "127.0.0.1:0", "--database-url", `sqlite:///${join(dir, "cp.db")}`],
    {
      cwd: REPO,
      env: { ...process.env, PILOTHOUSE_BOOTSTRAP_KEY: adminKey, PILOTHOUSE_LOG_LEVEL: "WARNING" },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  const address = await new Promise<string>((ok, fail) => {
    let seen = "";
    const timer = setTimeout(() => fail(new Error(`control plane did not start:\n${seen}`)), 30_000);
    child.stderr?.on("data", (chunk: Buffer) => {
      seen += chunk.toString();
      const match = /listening on (\S+)/.exec(seen);
      if (match) {
        clearTimeout(timer);
        ok(match[1]);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      fail(new Error(`control plane exited with ${code}:\n${seen}`));
    });
  });
  return {
    address,
    adminKey,
    stop: () =>
      new Promise<void>((done) => {
        child.removeAllListeners("exit");
        child.on("exit", () => {
          rmSync(dir, { recursive: true, force: true });
          done();
        });
        child.kill("SIGTERM");
      }),
  };
}
