// The ceiling for one consumer process: Node's amqplib draining a queue (JSON.parse + one ack
// per message, no validation). Run by `python -m bench.ceiling`, which fills the queue first.
// usage: node bench/amqplib_consume.js URL QUEUE COUNT PREFETCH  (amqplib on NODE_PATH)
"use strict";
const amqp = require("amqplib");

async function main() {
  const [url, queue, countText, prefetchText] = process.argv.slice(2);
  const count = Number(countText);
  const conn = await amqp.connect(url);
  const ch = await conn.createChannel();
  await ch.prefetch(Number(prefetchText));
  let seen = 0;
  let first = 0n;
  let cpu = null;
  await new Promise((resolve) => {
    ch.consume(queue, (msg) => {
      JSON.parse(msg.content.toString("utf8"));
      ch.ack(msg);
      seen += 1;
      if (seen === 1) {
        first = process.hrtime.bigint();
        cpu = process.cpuUsage();
      }
      if (seen === count) resolve();
    });
  });
  const wall = Number(process.hrtime.bigint() - first) / 1e9;
  const used = process.cpuUsage(cpu);
  const perEvent = (used.user + used.system) / count;
  console.log(JSON.stringify({ rate: (count - 1) / wall, cpu_us: perEvent }));
  await ch.close();
  await conn.close();
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
