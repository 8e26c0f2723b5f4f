/*
 * topo.h - what this node's RDMA hardware looks like, and which devices UCX should use.
 *
 * A topo_desc_t describes the RDMA devices of one node: per device its name, node GUID and
 * PCI address, per port the state, link layer (InfiniBand or Ethernet = RoCE), speed, MTU
 * and the GID table (type RoCE v1/v2, netdev, IPv4-mapped address). It is filled either
 * through libibverbs (topo_discover_verbs: devices and port attributes from the verbs
 * API, GID types and netdevs from sysfs exactly as rdma-core's show_gids reads them) or
 * from sysfs alone (topo_discover_sysfs). Every sysfs path starts at a root parameter
 * ("/sys" on a real node), so tests build a fake tree in a temporary directory.
 *
 * topo_propose() is a pure function of a description: it picks the ports UCX should
 * drive (UCX_NET_DEVICES) and says why. On a DGX Spark each QSFP port of the ConnectX-7
 * is two PCIe Gen5 x4 halves ("twins", e.g. rocep1s0f1 and roceP2p1s0f1 at PCI
 * 0000:01:00.1 and 0002:01:00.1), each good for ~100 Gb/s, so both must carry traffic to
 * reach the ~200 Gb/s of the cable. Facts: ../shared/reference/transport-ucx-nccl-zmq.md
 * sections 0, 1.6, 2 and 3.3; docs/topology.md.
 */
#ifndef TDM_TOPO_H
#define TDM_TOPO_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOPO_NAME_MAX 64 /* device and netdev names, including the terminator */
#define TOPO_PCI_MAX  32
#define TOPO_NOTE_MAX 512

/* Port states, numbered as ibv_port_state and as sysfs prints them ("4: ACTIVE"). */
typedef enum topo_port_state {
    TOPO_PORT_UNKNOWN = 0, /* IBV_PORT_NOP */
    TOPO_PORT_DOWN = 1,
    TOPO_PORT_INIT = 2,
    TOPO_PORT_ARMED = 3,
    TOPO_PORT_ACTIVE = 4,
    TOPO_PORT_ACTIVE_DEFER = 5,
} topo_port_state_t;

typedef enum topo_link_layer {
    TOPO_LINK_UNKNOWN = 0,
    TOPO_LINK_INFINIBAND,
    TOPO_LINK_ETHERNET, /* RoCE */
} topo_link_layer_t;

typedef enum topo_gid_type {
    TOPO_GID_UNKNOWN = 0,
    TOPO_GID_IB,
    TOPO_GID_ROCE_V1,
    TOPO_GID_ROCE_V2,
} topo_gid_type_t;

typedef struct topo_gid {
    int index;                  /* index in the port's GID table                 */
    uint8_t raw[16];            /* network order, as ibv_gid                     */
    topo_gid_type_t type;       /* from gid_attrs/types/<index>                  */
    char netdev[TOPO_NAME_MAX]; /* from gid_attrs/ndevs/<index>; "" for IB       */
} topo_gid_t;

typedef struct topo_port {
    int num; /* 1-based port number                                           */
    topo_port_state_t state;
    topo_link_layer_t link_layer;
    int width;                  /* lanes (1, 2, 4, 8, 12); 0 when unknown           */
    double lane_gbps;           /* per-lane rate; 0 when unknown                    */
    double rate_gbps;           /* width x lane rate (what the port reports)        */
    int active_mtu;             /* RDMA MTU in bytes (256..4096); 0 when unknown    */
    int max_mtu;                /* bytes; 0 when unknown                            */
    char netdev[TOPO_NAME_MAX]; /* the port's Ethernet netdev (RoCE); "" otherwise  */
    int n_gids;
    topo_gid_t *gids; /* non-empty entries only, ascending index          */
} topo_port_t;

typedef struct topo_device {
    char name[TOPO_NAME_MAX];  /* "rocep1s0f1", "mlx5_0"                         */
    uint64_t node_guid;        /* as ibv_devinfo prints it (host order)          */
    char pci[TOPO_PCI_MAX];    /* "0000:01:00.1", "" when unknown                */
    char error[TOPO_NOTE_MAX]; /* why ports could not be read ("" when fine)    */
    int n_ports;
    topo_port_t *ports;
} topo_device_t;

typedef struct topo_desc {
    char source[TOPO_NOTE_MAX]; /* "libibverbs" or "sysfs at <root>"              */
    char note[TOPO_NOTE_MAX];   /* why there are no devices, when there are none  */
    int n_devs;
    topo_device_t *devs;
} topo_desc_t;

/*
 * Lists the RDMA devices through libibverbs; GID types and netdevs come from
 * <sysfs_root>/class/infiniband (NULL: "/sys"). A kernel without RDMA support
 * (ibv_get_device_list fails with ENOSYS) or a machine without devices is not an error:
 * the description has no devices and `note` says why. A device that cannot be opened is
 * listed with its `error` set. Caller frees with topo_desc_destroy().
 */
tdm_status_t topo_discover_verbs(const char *sysfs_root, topo_desc_t **out, tdm_error_t *err);

/* Same from sysfs only: <root>/class/infiniband/<dev>/{node_guid,device,ports/<p>/...}.
 * A missing class/infiniband directory means no devices. */
tdm_status_t topo_discover_sysfs(const char *root, topo_desc_t **out, tdm_error_t *err);

void topo_desc_destroy(topo_desc_t *d); /* NULL is fine */

/*
 * Reads the GID table of port->num of device `dev` under <root>/class/infiniband as
 * rdma-core's show_gids does: every gids/<i>, skipping the all-zero entry and the bare
 * fe80:: prefix, with gid_attrs/types/<i> ("IB/RoCE v1", "RoCE v2") and
 * gid_attrs/ndevs/<i>. port->link_layer decides whether "IB/RoCE v1" means IB or RoCE
 * v1. Replaces port->gids; sets port->netdev from the first entry that names one.
 */
tdm_status_t topo_sysfs_read_gids(const char *root, const char *dev, topo_port_t *port,
                                  tdm_error_t *err);

/* Fills dev->ports (dev->ports must be NULL) from <root>/class/infiniband/<dev->name>/ports:
 * state, link layer, rate, GID table, and for RoCE the RDMA MTU from the netdev's MTU. */
tdm_status_t topo_sysfs_read_ports(const char *root, topo_device_t *dev, tdm_error_t *err);

/* The PCI address ("0000:01:00.1") that <root>/class/infiniband/<dev>/device links to;
 * "" when there is no such link or its target does not end in a PCI address. */
void topo_sysfs_read_pci(const char *root, const char *dev, char *out, size_t n);

/* ---- small pure helpers (verbs enum codes, GID text) ---- */

/* ibv_port_attr.active_width code -> lanes (1->1, 2->4, 4->8, 8->12, 16->2); 0 if unknown. */
int topo_ib_width_lanes(int code);
/* ibv_port_attr.active_speed code -> Gb/s per lane (1->2.5 ... 128->100); 0 if unknown. */
double topo_ib_speed_gbps(int code);
/* enum ibv_mtu (1..5) -> bytes (256..4096); 0 if unknown. */
int topo_ib_mtu_bytes(int code);
/* The RDMA MTU a RoCE port gets on a netdev with this Ethernet MTU (the kernel's
 * iboe_get_mtu: the largest of 4096..256 that fits with the RoCE headers); 0 if none. */
int topo_roce_mtu_for_netdev(int eth_mtu);
const char *topo_port_state_name(topo_port_state_t s); /* "ACTIVE" */
const char *topo_link_layer_name(topo_link_layer_t l); /* "Ethernet" */
const char *topo_gid_type_name(topo_gid_type_t t);     /* "RoCE v2" */
/* "fe80:0000:...:4f8a" (8 groups of 4 hex digits, as sysfs prints) -> 16 bytes. */
bool topo_gid_parse(const char *text, uint8_t raw[16]);
/* True for ::ffff:a.b.c.d; then writes "a.b.c.d" to buf (at least 16 bytes). */
bool topo_gid_ipv4(const topo_gid_t *g, char *buf, size_t n);
/* The address in IPv6 notation ("::ffff:192.168.200.13", "fe80::e42:a1ff:fe65:4f8a"). */
void topo_gid_format(const topo_gid_t *g, char *buf, size_t n);

/* ---- the UCX device proposal ---- */

#define TOPO_MAX_RAILS 16
#define TOPO_MAX_NOTES 16

typedef enum topo_transport {
    TOPO_TRANSPORT_TCP = 0, /* no usable RDMA port: UCX uses TCP (+ shm within a node) */
    TOPO_TRANSPORT_RDMA,
} topo_transport_t;

typedef struct topo_rail {
    int dev, port;                /* indices into desc->devs and that device's ports        */
    int gid_index;                /* the RoCE v2 IPv4 GID UCX auto-selects; -1 for IB        */
    int twin;                     /* index in rails[] of its twin (other PCIe half), or -1   */
    char name[TOPO_NAME_MAX + 8]; /* "rocep1s0f1:1"                               */
} topo_rail_t;

typedef struct topo_proposal {
    topo_transport_t transport;
    int n_rails;
    topo_rail_t rails[TOPO_MAX_RAILS];
    int n_twin_pairs;    /* pairs of twins with both halves usable                */
    int n_twins_missing; /* usable ports whose twin is present but not usable     */
    char ucx_net_devices[TOPO_MAX_RAILS * (TOPO_NAME_MAX + 8)]; /* "" for TCP        */
    char nccl_ib_hca[TOPO_MAX_RAILS * (TOPO_NAME_MAX + 8)];
    int max_rndv_rails; /* UCX_MAX_RNDV_RAILS to set; 0: keep UCX's default (2)  */
    int n_notes;        /* why: one sentence each                                */
    char notes[TOPO_MAX_NOTES][TOPO_NOTE_MAX];
    int n_warnings; /* what to fix on the node                                */
    char warnings[TOPO_MAX_NOTES][TOPO_NOTE_MAX];
} topo_proposal_t;

/*
 * Which ports UCX should use, and why; a pure function of d (no I/O, no allocation).
 * A port is usable when it is ACTIVE and either InfiniBand or RoCE with a RoCE v2 GID
 * holding an IPv4 address (what UCX's GID auto-selection prefers). Twins are ports of
 * devices at the same PCI bus:device.function in different PCI domains (or, without a
 * PCI address, named roce[P<domain>]p<bus>s<slot>f<fn> alike); usable twins are
 * proposed side by side.
 */
void topo_propose(const topo_desc_t *d, topo_proposal_t *out);

/* The twin key of a device: "01:00.1" and its PCI domain (0 for "0000:01:00.1"), from
 * the PCI address or else from the name. False when neither gives one. */
bool topo_twin_key(const topo_device_t *dev, char *key, size_t n, unsigned *domain);

#ifdef __cplusplus
}
#endif

#endif
