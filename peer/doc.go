// Package peer gossips between ewgate gateways with hashicorp/memberlist:
// membership, failure detection, node metadata and the per-network catalog
// summaries that let one network route to another.
//
// Every gateway runs one [Node]. A node advertises [Meta] (its network, the
// passthrough and tunnel addresses other networks dial, its SPIFFE ID) and
// publishes a [Summary] of its own network: per exported service its
// definition (namespace, ports, subsets and their labels, exportTo, the
// endpoints' SPIFFE IDs) and, per port and subset, the number of healthy
// endpoints per locality. Endpoint addresses never appear in a summary, so
// they never leave their network.
//
// # Propagation
//
// Each origin node's summary is one versioned entry. A [Version] is an
// (epoch, sequence) pair: the epoch is taken from the wall clock at [Start]
// (and raised above any earlier incarnation of the same name the node hears
// of), the sequence grows with each [Node.Publish]. A receiver keeps the
// newest version per origin, so old news never overwrites new, whatever
// order messages arrive in.
//
// A publish travels as a delta against the previous version: the services
// that changed, whole, and the hosts removed. A receiver holding that base
// version applies it; others ignore it until push/pull. A delta (or, when
// most services changed, the whole entry) small enough for a gossip packet
// is broadcast through memberlist's TransmitLimitedQueue and relayed by
// every node that finds it new (epidemic dissemination). A larger one is
// sent over TCP (SendReliable) to every live member, because memberlist
// silently never sends a broadcast that does not fit into a packet. The
// full state also travels in memberlist's periodic push/pull, each
// distinct summary once (the gateways of one network usually publish the
// same one), compressed with DEFLATE and cached until something changes;
// it repairs anything a broadcast missed. Equal summaries are also stored
// once. Every received message and state is bounded by
// [Config.MaxStateBytes], every entry by [Config.MaxEntryBytes]; an entry
// over its limit, or that would make the held entries exceed the state
// limit, is refused alone. A state a peer would refuse leaves out the
// largest summaries of other origins.
//
// # Liveness
//
// [Node.Summaries] returns only the entries of live members (alive or
// suspect) and of the node itself. When a gateway leaves or is declared
// dead its summary is withdrawn; when the last gateway of a network goes,
// nothing of that network remains.
//
// # Partitions and reconnect
//
// Once memberlist has declared a node dead it stops contacting it (after
// GossipToTheDeadTime: 15 s to 60 s by profile), so the two sides of a
// network partition that lasted longer than failure detection would stay
// apart after it heals. Like Serf's reconnect, a node remembers the members
// that failed (declared dead without a goodbye; not those that left) with
// their gossip address, and every [Config.ReconnectInterval] (default
// [DefaultReconnectInterval], with jitter) joins up to three of them at
// random: one join that gets through exchanges both sides' views and the
// rest spreads by gossip. A member comes off that list when it is alive
// again (or another node holds its address), when it leaves, or after
// [Config.ReconnectTimeout] (default [DefaultReconnectTimeout]). While a
// node sees no other live member it also rejoins its [Config.Join] seeds,
// so a gateway whose peers all restarted on the same addresses finds them.
// Leave and Shutdown stop it; [Stats] counts pending members, attempts and
// successes.
//
// # Security
//
// Gossip is encrypted and authenticated with memberlist's AES-GCM keyring:
// a node without one of the cluster's keys can neither join nor inject
// entries. Plaintext gossip must be asked for with [Config.Insecure].
// [Config.MeshID] becomes memberlist's label, which keeps two meshes on one
// network apart but authenticates nothing.
//
// With [Config.Identity] a node signs its entry with its SVID (over the
// origin name, the version and the digest of the summary) and accepts
// another origin's entry only when its certificate chain verifies against
// the trust bundle, [Config.AllowGateway] allows the chain's SPIFFE ID and
// that ID is the one the origin member announces in its [Meta]: a member
// holding the gossip key cannot speak for another gateway. Chains travel
// once (push/pull states, TCP sends, an introduction to each new member);
// verification is cached by digest. Versions ([MaxSeq], [MaxClockSkew]) and
// healthy counts ([MaxHealthyCount]) are bounded with or without an
// identity.
//
// Nothing received from the network can make a node panic: malformed meta,
// state or messages are counted in [Stats].Rejected, logged and ignored.
//
// # Names
//
// Two live nodes under one name confuse memberlist for as long as both
// run. The one started later (its start time is in [Meta]) reports the
// conflict through [Node.Conflict], which gateways turn into readiness.
//
// # Versions
//
// The wire formats carry [ProtocolVersion]. Nodes, messages and push/pull
// states of another version are refused and counted ([RejectVersion]):
// the gateways of one mesh run one version.
package peer
