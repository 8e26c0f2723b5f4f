/*
 * topo_verbs.c - RDMA devices through libibverbs: the device list, node GUID, and per port
 * the state, link layer, width x speed and MTU from ibv_query_port. GID types and netdevs
 * are not in the stable verbs API of every rdma-core (ibv_query_gid_type is private), so
 * they come from sysfs as rdma-core's show_gids reads them (topo_sysfs_read_gids).
 *
 * On a kernel without RDMA support ibv_get_device_list() returns NULL with errno ENOSYS;
 * that is "no devices", not an error.
 */
#include "common/mem.h"
#include "topology/topo.h"

#include <endian.h>
#include <errno.h>
#include <infiniband/verbs.h>
#include <stdio.h>
#include <string.h>

static tdm_status_t query_ports(struct ibv_context *ctx, const char *root, topo_device_t *dev,
                                tdm_error_t *err)
{
    struct ibv_device_attr attr;
    int rc = ibv_query_device(ctx, &attr);
    if (rc != 0) {
        snprintf(dev->error, sizeof(dev->error), "ibv_query_device: %s", strerror(rc));
        return TDM_OK;
    }
    if (attr.phys_port_cnt == 0) {
        return TDM_OK;
    }
    dev->ports = tdm_xcalloc(attr.phys_port_cnt, sizeof(topo_port_t));
    for (int p = 1; p <= attr.phys_port_cnt; p++) {
        topo_port_t *port = &dev->ports[dev->n_ports];
        struct ibv_port_attr pa;
        memset(&pa, 0, sizeof(pa));
        rc = ibv_query_port(ctx, (uint8_t)p, &pa);
        if (rc != 0) {
            snprintf(dev->error, sizeof(dev->error), "ibv_query_port %d: %s", p, strerror(rc));
            continue;
        }
        port->num = p;
        port->state =
            pa.state <= IBV_PORT_ACTIVE_DEFER ? (topo_port_state_t)pa.state : TOPO_PORT_UNKNOWN;
        port->link_layer = pa.link_layer == IBV_LINK_LAYER_INFINIBAND ? TOPO_LINK_INFINIBAND
                           : pa.link_layer == IBV_LINK_LAYER_ETHERNET ? TOPO_LINK_ETHERNET
                                                                      : TOPO_LINK_UNKNOWN;
        port->width = topo_ib_width_lanes(pa.active_width);
        port->lane_gbps = topo_ib_speed_gbps(pa.active_speed);
        port->rate_gbps = port->width * port->lane_gbps;
        port->active_mtu = topo_ib_mtu_bytes(pa.active_mtu);
        port->max_mtu = topo_ib_mtu_bytes(pa.max_mtu);
        dev->n_ports++;
        tdm_status_t st = topo_sysfs_read_gids(root, dev->name, port, err);
        if (st != TDM_OK) {
            return st;
        }
    }
    return TDM_OK;
}

tdm_status_t topo_discover_verbs(const char *sysfs_root, topo_desc_t **out, tdm_error_t *err)
{
    const char *root = sysfs_root != NULL ? sysfs_root : "/sys";
    topo_desc_t *d = tdm_xcalloc(1, sizeof(*d));
    snprintf(d->source, sizeof(d->source), "libibverbs, GID attributes from %.250s", root);
    int num = 0;
    errno = 0;
    struct ibv_device **list = ibv_get_device_list(&num);
    if (list == NULL) {
        int e = errno;
        snprintf(d->note, sizeof(d->note), "ibv_get_device_list: %s%s", strerror(e),
                 e == ENOSYS ? " (this kernel has no RDMA support)" : "");
        *out = d;
        return TDM_OK;
    }
    if (num == 0) {
        snprintf(d->note, sizeof(d->note), "libibverbs lists no RDMA devices");
    }
    tdm_status_t st = TDM_OK;
    d->devs = num > 0 ? tdm_xcalloc((size_t)num, sizeof(topo_device_t)) : NULL;
    for (int i = 0; i < num && st == TDM_OK; i++) {
        topo_device_t *dev = &d->devs[d->n_devs++];
        snprintf(dev->name, sizeof(dev->name), "%s", ibv_get_device_name(list[i]));
        dev->node_guid = be64toh(ibv_get_device_guid(list[i]));
        topo_sysfs_read_pci(root, dev->name, dev->pci, sizeof(dev->pci));
        struct ibv_context *ctx = ibv_open_device(list[i]);
        if (ctx == NULL) {
            /* Without access to /dev/infiniband the ports are still in sysfs. */
            snprintf(dev->error, sizeof(dev->error),
                     "ibv_open_device: %s (permissions on /dev/infiniband?); ports read from "
                     "sysfs",
                     strerror(errno));
            st = topo_sysfs_read_ports(root, dev, err);
            continue;
        }
        st = query_ports(ctx, root, dev, err);
        ibv_close_device(ctx);
    }
    ibv_free_device_list(list);
    if (st != TDM_OK) {
        topo_desc_destroy(d);
        return st;
    }
    *out = d;
    return TDM_OK;
}
