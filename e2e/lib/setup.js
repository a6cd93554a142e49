// The fixture of most browser tests: a gateway of its own (fresh ports and certificate
// directory) and a headless browser, both stopped when the test ends.
import { launchBrowser } from "./browser.js";
import { startGateway, tempDir } from "./gateway.js";

export async function setUp(t, gatewayOptions = {}) {
  const certs = tempDir("rtgate-e2e-certs-");
  t.after(certs.cleanup);
  const gateway = await startGateway({ certDir: certs.dir, ...gatewayOptions });
  t.after(() => gateway.stop());
  const browser = await launchBrowser();
  t.after(() => browser.close());
  return { gateway, browser };
}
