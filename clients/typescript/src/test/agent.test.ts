import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { ApiError, PilothouseClient, toStruct, type Message } from "../index.js";
import { startControlPlane, startExecutor, type LiveServer, type Server } from "./live_server.js";

let server: LiveServer;
let executor: Server;
let admin: PilothouseClient;
const tenant = `ts-run-${Date.now().toString(36)}`;
const parent = `tenants/${tenant}`;

async function eventually<T>(check: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const answer = await check();
    if (answer !== undefined) return answer;
    if (Date.now() > deadline) throw new Error("not reached in time");
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  server = await startControlPlane();
  admin = new PilothouseClient({ address: server.address, apiKey: server.adminKey });
  const key = await admin.call<{ secret: string }>("ApiKeyService", "CreateApiKey", {
    api_key: { role: "ROLE_EXECUTOR", display_name: "ts executor" },
  });
  executor = await startExecutor(server.address, key.secret);
  // An agent whose scripted model asks for the calculator (which needs approval), then
  // answers with its result.
  await admin.call("TenantService", "CreateTenant", { tenant_id: tenant, tenant: { display_name: "TS" } });
  await admin.call("ToolService", "CreateTool", {
    parent,
    tool_id: "calc",
    tool: {
      description: "Evaluate arithmetic",
      kind: "TOOL_KIND_BUILTIN",
      endpoint: "calculator",
      approval: "APPROVAL_MODE_ALWAYS",
      input_schema: toStruct({
        type: "object",
        properties: { expression: { type: "string" } },
        required: ["expression"],
      }),
    },
  });
  await admin.call("ModelService", "CreateModel", {
    parent,
    model_id: "scripted",
    model: {
      provider: "MODEL_PROVIDER_SCRIPTED",
      input_price_per_million: "0.15",
      output_price_per_million: "0.60",
      context_window: 128000,
      max_output_tokens: 4096,
      scripted: {
        rules: [
          { on_step: 1, tool_calls: [{ tool: "calc", arguments: toStruct({ expression: "6 * 7" }) }] },
          { on_step: 2, answer: "The answer is {{last_tool_result}}" },
        ],
      },
    },
  });
  await admin.call("ModelService", "CreateModelRoute", {
    parent,
    model_route_id: "default",
    model_route: { targets: [{ model: `${parent}/models/scripted`, weight: 1 }] },
  });
  await admin.call("PromptService", "CreatePrompt", { parent, prompt_id: "support", prompt: {} });
  const version = await admin.call<{ prompt_version: Message }>("PromptService", "CreatePromptVersion", {
    parent: `${parent}/prompts/support`,
    prompt_version: { template: "You help with sums.", model_route: `${parent}/modelRoutes/default` },
  });
  await admin.call("PromptService", "SetPromptLabel", {
    name: `${parent}/prompts/support`,
    label: "production",
    version: version.prompt_version.name,
  });
  await admin.call("AgentRegistryService", "CreateAgent", {
    parent,
    agent_id: "helper",
    agent: { prompt: `${parent}/prompts/support`, tools: [`${parent}/tools/calc`] },
  });
});

after(async () => {
  admin?.close();
  await executor?.stop();
  await server?.stop();
});

test("runs an agent through an approval and reads its usage", async () => {
  const key = await admin.call<{ secret: string }>("ApiKeyService", "CreateApiKey", {
    api_key: { role: "ROLE_OPERATOR", tenant: parent, display_name: "ts operator" },
  });
  const client = new PilothouseClient({
    address: server.address,
    executorAddress: executor.address,
    apiKey: key.secret,
  });
  try {
    const request = { agent: `${parent}/agents/helper`, input: "what is six times seven?" };
    // The executor learns of the new key and agent through its configuration stream.
    const first = await eventually(async () => {
      const events: Message[] = [];
      try {
        for await (const response of client.stream<{ event: Message }>("AgentService", "RunAgent", request)) {
          events.push(response.event);
        }
      } catch (error) {
        if (error instanceof ApiError && ["UNAUTHENTICATED", "NOT_FOUND"].includes(error.code)) return undefined;
        throw error;
      }
      return events;
    });
    const kinds = first.map((e) => e.event);
    assert.deepEqual(kinds.slice(0, 2), ["run_started", "step_started"]);
    // The stream ends where the run waits for a person.
    assert.equal(kinds.at(-1), "approval_required");
    const run = String(first[0].run);
    const asked = first.at(-1)?.approval_required as Message;
    assert.equal(asked.tool, "calc");

    const pending = await eventually(async () => {
      const page = await client.call<{ approvals: Message[] }>("ApprovalService", "ListApprovals", {
        parent,
        state: "APPROVAL_STATE_PENDING",
      });
      return page.approvals.find((a) => a.run === run);
    });
    assert.equal(pending.kind, "APPROVAL_KIND_TOOL_CALL");
    // The decisions of a call whose outcome is unknown do not apply to a call waiting to run.
    await assert.rejects(
      client.call("ApprovalService", "DecideApproval", {
        name: pending.name,
        decision: "DECISION_MARK_DONE",
        result: '{"result": 42}',
      }),
      (error: unknown) => error instanceof ApiError && error.code === "INVALID_ARGUMENT" && /decision/.test(error.message),
    );
    const decided = await client.call<{ approval: Message }>("ApprovalService", "DecideApproval", {
      name: pending.name,
      decision: "DECISION_APPROVE",
      comment: "fine",
    });
    assert.equal(decided.approval.state, "APPROVAL_STATE_APPROVED");
    assert.equal(decided.approval.decision, "DECISION_APPROVE");

    const rest: Message[] = [];
    const after = String(first.at(-1)?.sequence);
    for await (const response of client.stream<{ event: Message }>("AgentService", "WatchRun", {
      name: run,
      after_sequence: after,
    })) {
      rest.push(response.event);
    }
    const stopped = rest.at(-1)?.run_stopped as Message;
    assert.equal(stopped.reason, "STOP_REASON_COMPLETED");
    const answer = rest.find((e) => e.event === "final_answer")?.final_answer as Message;
    assert.equal(answer.text, 'The answer is {"result": 42}');

    // The control plane's usage ledger has the run's model calls, to the cent.
    const row = await eventually(async () => {
      const usage = await client.call<{ rows: Message[] }>("TelemetryService", "QueryUsage", {
        parent,
        group_by: ["USAGE_DIMENSION_RUN"],
      });
      const mine = usage.rows.find((r) => r.run === run);
      return mine && Number(mine.model_calls) === 2 ? mine : undefined;
    });
    assert.equal(Number(row.tool_calls), 1);
    // The same decimal (the two may write it with different trailing zeros).
    assert.equal(Number(row.cost_usd), Number((stopped.usage as Message).cost_usd));
    assert.ok(Number(row.cost_usd) > 0);
    assert.ok(Number(row.approval_wait_seconds) > 0);
  } finally {
    client.close();
  }
});

test("AgentService needs an executor address", async () => {
  await assert.rejects(admin.call("AgentService", "GetRun", { name: `${parent}/runs/x` }), /executorAddress/);
});
