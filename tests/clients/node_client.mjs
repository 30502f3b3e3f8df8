// confluence.js (npm) through wikigate, with the library's defaults (Node's fetch, which asks
// for gzip). Run by scripts/clients against `wikigate demo`: GATEWAY is the gateway's origin,
// METRICS its /metrics URL. confluence.js checks every answer against Atlassian's schemas.
import { createV1Client } from 'confluence.js';

const { GATEWAY, METRICS } = process.env;
const ALICE = '712020:a11ce000-0000-4000-8000-000000000001';
const BOB = '712020:b0b00000-0000-4000-8000-000000000002';
const confluence = createV1Client({
  host: GATEWAY,
  auth: { type: 'basic', email: 'alice@example.com', apiToken: 'alice-api-token' },
});

/** The sum of a metric's samples whose labels include `labels`. */
async function metric(name, labels = {}) {
  const text = await (await fetch(METRICS)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    const match = line.match(/^(\w+)(\{[^}]*\})? (\S+)$/);
    if (!match || match[1] !== name) continue;
    const sample = Object.fromEntries([...(match[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => sample[k] === v)) total += Number(match[3]);
  }
  return total;
}

function check(condition, message) {
  if (!condition) {
    console.error(`node client: ${message}`);
    process.exit(1);
  }
}

async function reads() {
  const me = await confluence.users.getCurrentUser();
  check(me.accountId === ALICE, `current user: ${JSON.stringify(me)}`);
  const bob = await confluence.users.getUser({ accountId: BOB, expand: ['operations'] });
  check(bob.displayName === 'Bob Builder', `user: ${JSON.stringify(bob)}`);
  const groups = [];
  for (let start = 0; ; ) {
    const page = await confluence.users.getGroupMembershipsForUser({ accountId: ALICE, start, limit: 1 });
    groups.push(...page.results.map((g) => g.name));
    if (!page._links.next) break;
    check(`${page._links.base}${page._links.next}`.startsWith(GATEWAY), `paging left the gateway: ${page._links.base}`);
    start += page.results.length;
  }
  check(groups.join() === 'confluence-users,confluence-administrators,site-admins', `memberof: ${groups}`);
  const bulk = await confluence.users.getBulkUserLookup({ accountId: [ALICE, BOB] });
  check(bulk.results.map((u) => u.accountId).join() === `${ALICE},${BOB}`, `bulk: ${JSON.stringify(bulk)}`);
  const emails = await confluence.users.getPrivacyUnsafeUserEmailBulk({ accountId: [BOB, ALICE] });
  const list = Array.isArray(emails) ? emails : emails.results ?? emails;
  check(JSON.stringify(list).includes('bob@example.com'), `email bulk: ${JSON.stringify(emails)}`);
}

await reads();
const upstream = await metric('wikigate_upstream_requests_total');
const hits = await metric('wikigate_requests_total', { cache: 'hit' });
await reads();
check((await metric('wikigate_upstream_requests_total')) === upstream, 'repeated reads went upstream');
check((await metric('wikigate_requests_total', { cache: 'hit' })) >= hits + 7, 'repeated reads were not hits');

const space = { spaceKey: 'NODECLIENT' };
check((await confluence.contentWatches.isWatchingSpace(space)).watching === false, 'not watching at first');
await confluence.contentWatches.addSpaceWatcher(space);
check((await confluence.contentWatches.isWatchingSpace(space)).watching === true, 'watching after adding');
await confluence.contentWatches.removeSpaceWatch(space);
check((await confluence.contentWatches.isWatchingSpace(space)).watching === false, 'not watching after removing');

const property = { userId: ALICE, key: 'node-client' };
await confluence.userProperties.createUserProperty({ ...property, value: { theme: 'dark' } });
check((await confluence.userProperties.getUserProperty(property)).value.theme === 'dark', 'property created');
await confluence.userProperties.updateUserProperty({ ...property, value: { theme: 'light' } });
check((await confluence.userProperties.getUserProperty(property)).value.theme === 'light', 'property updated, read back fresh');
const keys = (await confluence.userProperties.getUserProperties({ userId: ALICE })).results.map((p) => p.key);
check(keys.includes('node-client'), `property listed: ${keys}`);
await confluence.userProperties.deleteUserProperty(property);
let gone = false;
try {
  await confluence.userProperties.getUserProperty(property);
} catch (error) {
  gone = String(error).includes('404') || error?.status === 404;
}
check(gone, 'property deleted');
console.log('node client (confluence.js): ok');
