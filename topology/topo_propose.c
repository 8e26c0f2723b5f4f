/*
 * topo_propose.c - which RDMA ports UCX should drive, and why (a pure function of a
 * topo_desc_t, unit-tested with fabricated descriptions).
 *
 * Rules (facts: ../shared/reference/transport-ucx-nccl-zmq.md sections 0, 1.6, 2, 3.3):
 *   - a port is usable when ACTIVE and InfiniBand, or RoCE with a RoCE v2 GID holding an
 *     IPv4-mapped address (UCX's GID auto-selection prefers v2 + IPv4; the Spark
 *     playbooks address every twin with IPv4);
 *   - RDMA devices go into UCX_NET_DEVICES as "<dev>:<port>"; netdev names there would
 *     only select TCP;
 *   - twins (same PCI bus:device.function, different PCI domain: rocep1s0f1 at
 *     0000:01:00.1 and roceP2p1s0f1 at 0002:01:00.1 on a DGX Spark) are two PCIe Gen5 x4
 *     halves of one QSFP port, ~100 Gb/s each although each reports 200 Gb/s; only both
 *     together reach the cable's ~200 Gb/s, so both go in, side by side, and a usable
 *     port whose twin is not usable gets a warning;
 *   - more than two rails: UCX_MAX_RNDV_RAILS (default 2, at most 4) is raised;
 *   - a RoCE port with an RDMA MTU below 4096 gets a warning (set MTU 9000).
 */
#include "topology/topo.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_CANDS 64

typedef struct cand {
    int dev, port;
    bool usable;
    bool placed;
    bool warned; /* named in a twin warning already */
    int gid_index;
    bool has_key;
    char key[16];
    unsigned domain;
} cand_t;

static void add_line(char lines[][TOPO_NOTE_MAX], int *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_line(char lines[][TOPO_NOTE_MAX], int *n, const char *fmt, ...)
{
    if (*n >= TOPO_MAX_NOTES) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lines[*n], TOPO_NOTE_MAX, fmt, ap);
    va_end(ap);
    (*n)++;
}

#define NOTE(...) add_line(out->notes, &out->n_notes, __VA_ARGS__)
#define WARN(...) add_line(out->warnings, &out->n_warnings, __VA_ARGS__)

static const topo_port_t *port_of(const topo_desc_t *d, const cand_t *c)
{
    return &d->devs[c->dev].ports[c->port];
}

/* The first RoCE v2 GID with an IPv4 address, or -1. */
static int v2_ipv4_gid(const topo_port_t *p)
{
    for (int i = 0; i < p->n_gids; i++) {
        if (p->gids[i].type == TOPO_GID_ROCE_V2 && topo_gid_ipv4(&p->gids[i], NULL, 0)) {
            return i;
        }
    }
    return -1;
}

/* Why a port is not usable, for the warning; "" when it is. */
static void why_not(const topo_port_t *p, char *buf, size_t n)
{
    buf[0] = '\0';
    if (p->state != TOPO_PORT_ACTIVE) {
        snprintf(buf, n, "state %s%s", topo_port_state_name(p->state),
                 p->state == TOPO_PORT_DOWN ? ": no link (cable, or the peer's port down)" : "");
    } else if (p->link_layer == TOPO_LINK_ETHERNET && v2_ipv4_gid(p) < 0) {
        snprintf(buf, n,
                 "up, but no RoCE v2 GID with an IPv4 address: give %s an IPv4 address "
                 "(a subnet of its own per twin)",
                 p->netdev[0] != '\0' ? p->netdev : "its netdev");
    } else if (p->link_layer == TOPO_LINK_UNKNOWN) {
        snprintf(buf, n, "unknown link layer");
    }
}

static void place(topo_proposal_t *out, const topo_desc_t *d, cand_t *c)
{
    if (out->n_rails >= TOPO_MAX_RAILS) {
        return;
    }
    topo_rail_t *r = &out->rails[out->n_rails++];
    r->dev = c->dev;
    r->port = c->port;
    r->twin = -1;
    const topo_port_t *p = port_of(d, c);
    r->gid_index = c->gid_index >= 0 ? p->gids[c->gid_index].index : -1;
    snprintf(r->name, sizeof(r->name), "%s:%d", d->devs[c->dev].name, p->num);
    c->placed = true;
}

static void join_rails(topo_proposal_t *out)
{
    size_t a = 0, b = 0;
    for (int i = 0; i < out->n_rails; i++) {
        const topo_rail_t *r = &out->rails[i];
        a += (size_t)snprintf(out->ucx_net_devices + a, sizeof(out->ucx_net_devices) - a, "%s%s",
                              i ? "," : "", r->name);
        b += (size_t)snprintf(out->nccl_ib_hca + b, sizeof(out->nccl_ib_hca) - b, "%s%s",
                              i ? "," : "", r->name);
        if (a >= sizeof(out->ucx_net_devices) || b >= sizeof(out->nccl_ib_hca)) {
            break; /* cannot happen: sized for TOPO_MAX_RAILS names */
        }
    }
}

void topo_propose(const topo_desc_t *d, topo_proposal_t *out)
{
    memset(out, 0, sizeof(*out));
    out->transport = TOPO_TRANSPORT_TCP;
    if (d->n_devs == 0) {
        NOTE("no RDMA devices%s%s%s: UCX will use TCP between nodes and shared memory between "
             "processes on one node",
             d->note[0] ? " (" : "", d->note, d->note[0] ? ")" : "");
        NOTE("UCX_NET_DEVICES can stay unset; to pin the TCP interface name it, e.g. "
             "UCX_NET_DEVICES=eth0");
        return;
    }

    cand_t cands[MAX_CANDS];
    int n = 0, n_usable = 0;
    for (int i = 0; i < d->n_devs; i++) {
        const topo_device_t *dev = &d->devs[i];
        if (dev->error[0] != '\0') {
            WARN("%s: %s", dev->name, dev->error);
        }
        char key[16];
        unsigned dom = 0;
        bool has_key = topo_twin_key(dev, key, sizeof(key), &dom);
        for (int p = 0; p < dev->n_ports && n < MAX_CANDS; p++) {
            cand_t *c = &cands[n++];
            memset(c, 0, sizeof(*c));
            c->dev = i;
            c->port = p;
            c->has_key = has_key;
            c->domain = dom;
            snprintf(c->key, sizeof(c->key), "%s", has_key ? key : "");
            const topo_port_t *port = &dev->ports[p];
            c->gid_index = port->link_layer == TOPO_LINK_ETHERNET ? v2_ipv4_gid(port) : -1;
            c->usable = port->state == TOPO_PORT_ACTIVE &&
                        (port->link_layer == TOPO_LINK_INFINIBAND ||
                         (port->link_layer == TOPO_LINK_ETHERNET && c->gid_index >= 0));
            n_usable += c->usable;
        }
    }

    char why[TOPO_NOTE_MAX];
    if (n_usable == 0) {
        NOTE("%d RDMA device%s but no usable port: UCX will use TCP between nodes and shared "
             "memory between processes on one node",
             d->n_devs, d->n_devs == 1 ? "" : "s");
        for (int i = 0; i < n; i++) {
            why_not(port_of(d, &cands[i]), why, sizeof(why));
            WARN("%s port %d: %s", d->devs[cands[i].dev].name, port_of(d, &cands[i])->num, why);
        }
        return;
    }

    out->transport = TOPO_TRANSPORT_RDMA;
    /* Rails in device order; a usable twin pair side by side, the lower PCI domain first. */
    for (int i = 0; i < n; i++) {
        cand_t *c = &cands[i];
        if (!c->usable || c->placed) {
            continue;
        }
        const topo_port_t *pc = port_of(d, c);
        cand_t *partner = NULL;
        for (int j = 0; c->has_key && j < n; j++) {
            cand_t *t = &cands[j];
            if (j == i || !t->has_key || t->domain == c->domain || strcmp(t->key, c->key) != 0 ||
                port_of(d, t)->num != pc->num) {
                continue;
            }
            if (t->usable && !t->placed && partner == NULL) {
                partner = t;
            } else if (!t->usable && !t->warned) {
                why_not(port_of(d, t), why, sizeof(why));
                t->warned = true;
                out->n_twins_missing++;
                WARN("%s:%d is usable but its twin %s:%d is not (%s): traffic gets one PCIe half, "
                     "about 100 Gb/s instead of ~200; bring the twin up with an IPv4 address on "
                     "a subnet of its own and MTU 9000",
                     d->devs[c->dev].name, pc->num, d->devs[t->dev].name, port_of(d, t)->num, why);
            }
        }
        if (partner == NULL) {
            place(out, d, c);
            continue;
        }
        cand_t *lo = partner->domain < c->domain ? partner : c;
        cand_t *hi = lo == c ? partner : c;
        place(out, d, lo);
        place(out, d, hi);
        const int a = out->n_rails - 2, z = out->n_rails - 1;
        out->rails[a].twin = z;
        out->rails[z].twin = a;
        out->n_twin_pairs++;
        NOTE("%s and %s are twins: the two PCIe halves of one ConnectX-7 port (PCI %s and %s). "
             "Each reports %.0f Gb/s, but on a DGX Spark each half is a PCIe Gen5 x4 link good "
             "for about 100 Gb/s, so only both together carry the ~200 Gb/s of the cable; UCX "
             "stripes large messages over both rails",
             out->rails[a].name, out->rails[z].name,
             d->devs[lo->dev].pci[0] ? d->devs[lo->dev].pci : "?",
             d->devs[hi->dev].pci[0] ? d->devs[hi->dev].pci : "?", port_of(d, lo)->rate_gbps);
    }
    join_rails(out);

    /* Ports left out, and the ports that are in but lack something. */
    for (int i = 0; i < n; i++) {
        const cand_t *c = &cands[i];
        const topo_port_t *p = port_of(d, c);
        if (!c->usable) {
            if (!c->warned) {
                why_not(p, why, sizeof(why));
                NOTE("not used: %s port %d (%s)", d->devs[c->dev].name, p->num, why);
            }
            continue;
        }
        if (p->link_layer == TOPO_LINK_ETHERNET && p->active_mtu > 0 && p->active_mtu < 4096) {
            WARN("%s:%d has an RDMA MTU of %d: set MTU 9000 on %s (RDMA MTU 4096)",
                 d->devs[c->dev].name, p->num, p->active_mtu,
                 p->netdev[0] ? p->netdev : "its netdev");
        }
    }
    const topo_rail_t *r0 = &out->rails[0];
    if (r0->gid_index >= 0) {
        NOTE("UCX selects the RoCE v2 IPv4 GID by itself (index %d on %s); set "
             "UCX_IB_GID_INDEX only if it picks another",
             r0->gid_index, r0->name);
    }
    if (out->n_rails == 1 && out->n_twins_missing == 0) {
        NOTE("one usable port, %s: no twin found", r0->name);
    }
    if (out->n_rails > 2) {
        out->max_rndv_rails = out->n_rails < 4 ? out->n_rails : 4;
        NOTE("%d rails: UCX_MAX_RNDV_RAILS=%d lets large messages use them all (UCX's default "
             "is 2; on a DGX Spark the PCIe links, not the cables, limit bandwidth, so a second "
             "cable adds little)",
             out->n_rails, out->max_rndv_rails);
    }
}
