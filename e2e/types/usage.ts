// The browser package's TypeScript types, checked by tsc (scripts/test.sh): the package
// README's example, typed as a user's code would be. Compiled only, never run.
import init, { RtgateClient } from "../../client-wasm/pkg/rtgate_client.js";
import type { ConnectionState, Presence, RoomEvent, SubscribeResult } from "../../client-wasm/pkg/rtgate_client.js";

declare function refetch(room: string): void;
declare function render(event: RoomEvent["event"]): void;

export async function example(): Promise<void> {
  await init();

  const client = new RtgateClient({
    webTransportUrl: "https://gateway.example:4433/wt",
    webSocketUrl: "wss://gateway.example/ws",
    token: async () => (await fetch("/rtgate/token")).text(),
    onStateChange: (s: ConnectionState) => console.log(s.state, s.transport),
    onRoomReset: (room) => refetch(room),
  });

  const live: SubscribeResult = await client.subscribe("conversation:42", (e) => render(e.event), {
    token: () => fetch("/rtgate/subscription?room=conversation:42").then((r) => r.text()),
  });
  console.log(live.resumed, live.recovered);

  client.typing("conversation:42", true);
  await client.publish("conversation:42", { name: "message.created", json: JSON.stringify({ content: "hi" }) });
  await client.setAvailability("busy");
  const presence: Presence = await client.presence();
  console.log(presence.users?.length);
  client.close();

  // Plain HTTP only, moving up sooner when a better transport comes back.
  const fallback = new RtgateClient({
    webSocketUrl: "wss://gateway.example/ws",
    httpUrl: "https://gateway.example/http",
    transport: "auto",
    fallbackCooldownMs: 60_000,
    token: () => "token",
    onStateChange: (s) => {
      const onHttp: boolean = s.transport === "http";
      console.log(onHttp);
    },
  });
  fallback.close();
}
