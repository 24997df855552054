import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { ApiError, PilothouseClient, toStruct, type Message } from "../index.js";
import { startControlPlane, type LiveServer } from "./live_server.js";

let server: LiveServer;
let admin: PilothouseClient;
const tenant = `ts-${Date.now().toString(36)}`;
const parent = `tenants/${tenant}`;

before(async () => {
  server = await startControlPlane();
  admin = new PilothouseClient({ address: server.address, apiKey: server.adminKey });
  await admin.call("TenantService", "CreateTenant", { tenant_id: tenant, tenant: { display_name: "TS" } });
});

after(async () => {
  admin?.close();
  await server?.stop();
});

function tool(description: string): Message {
  return {
    description,
    kind: "TOOL_KIND_BUILTIN",
    endpoint: "echo",
    input_schema: toStruct({ type: "object", properties: { text: { type: "string", maxLength: 100 } } }),
    annotations: { read_only_hint: true },
  };
}

test("creates a tool and reads it back", async () => {
  const created = await admin.call<{ tool: Message }>("ToolService", "CreateTool", {
    parent,
    tool_id: "echo",
    tool: tool("Echo the text back"),
  });
  assert.equal(created.tool.name, `${parent}/tools/echo`);
  assert.equal(created.tool.kind, "TOOL_KIND_BUILTIN");
  assert.ok(created.tool.etag);
  const got = await admin.call<{ tool: Message }>("ToolService", "GetTool", { name: `${parent}/tools/echo` });
  assert.equal(got.tool.description, "Echo the text back");
  assert.equal((got.tool.annotations as Message).read_only_hint, true);
});

test("lists tools page by page", async () => {
  for (let i = 0; i < 5; i++) {
    await admin.call("ToolService", "CreateTool", { parent, tool_id: `paged-${i}`, tool: tool(`Tool ${i}`) });
  }
  const names: string[] = [];
  let token = "";
  let pages = 0;
  do {
    const page = await admin.call<{ tools: Message[]; next_page_token: string }>("ToolService", "ListTools", {
      parent,
      page_size: 2,
      page_token: token,
    });
    assert.ok(page.tools.length <= 2);
    names.push(...page.tools.map((t) => String(t.name).split("/").pop() as string));
    token = page.next_page_token;
    pages++;
  } while (token);
  assert.deepEqual(names, ["echo", "paged-0", "paged-1", "paged-2", "paged-3", "paged-4"]);
  assert.equal(pages, 3);
});

test("a client key may not change the registry", async () => {
  const key = await admin.call<{ secret: string }>("ApiKeyService", "CreateApiKey", {
    api_key: { role: "ROLE_CLIENT", tenant: parent, display_name: "ts client" },
  });
  const client = new PilothouseClient({ address: server.address, apiKey: key.secret });
  try {
    await assert.rejects(
      client.call("ToolService", "CreateTool", { parent, tool_id: "sneaky", tool: tool("nope") }),
      (error: unknown) => error instanceof ApiError && error.code === "PERMISSION_DENIED",
    );
  } finally {
    client.close();
  }
});

test("bad input is INVALID_ARGUMENT naming the field", async () => {
  await assert.rejects(
    admin.call("ToolService", "CreateTool", { parent, tool_id: "Bad_Id", tool: tool("x") }),
    (error: unknown) => error instanceof ApiError && error.code === "INVALID_ARGUMENT" && /tool_id/.test(error.details),
  );
});
