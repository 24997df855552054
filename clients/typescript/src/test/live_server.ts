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

export interface Server {
  address: string;
  stop(): Promise<void>;
}

export interface LiveServer extends Server {
  adminKey: string;
}

const PYTHON = process.env.PILOTHOUSE_PYTHON ?? join(REPO, ".venv", "bin", "python");

export async function startControlPlane(): Promise<LiveServer> {
  const dir = mkdtempSync(join(tmpdir(), "pilothouse-ts-"));
  const adminKey = newApiKey();
  const served = await serve(
    ["-m", "controlplane", "serve", "--listen", "127.0.0.1:0", "--database-url", `sqlite:///${join(dir, "cp.db")}`],
    { PILOTHOUSE_BOOTSTRAP_KEY: adminKey },
    dir,
  );
  return { ...served, adminKey };
}

/** An executor process (python -m dataplane serve) of the control plane at ``controlPlane``. */
export async function startExecutor(controlPlane: string, executorKey: string): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), "pilothouse-ts-executor-"));
  return serve(
    [
      "-m",
      "dataplane",
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--control-plane",
      controlPlane,
      "--node-id",
      `ts-${randomBytes(3).toString("hex")}`,
      "--state-dir",
      dir,
      "--run-store-url",
      `sqlite:///${join(dir, "runs.db")}`,
    ],
    { PILOTHOUSE_EXECUTOR_KEY: executorKey },
    dir,
  );
}

/** Starts ``python args`` and waits for its "listening on" line; ``dir`` goes with it. */
async function serve(args: string[], env: Record<string, string>, dir: string): Promise<Server> {
  const child: ChildProcess = spawn(PYTHON, args, {
    cwd: REPO,
    env: { ...process.env, ...env, PILOTHOUSE_LOG_LEVEL: "WARNING" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const address = await new Promise<string>((ok, fail) => {
    let seen = "";
    const timer = setTimeout(() => fail(new Error(`${args[1]} did not start:\n${seen}`)), 30_000);
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
      fail(new Error(`${args[1]} exited with ${code}:\n${seen}`));
    });
  });
  return {
    address,
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
