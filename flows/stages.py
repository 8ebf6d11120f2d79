"""Handles of the pipeline's stages and the constants the stage modules share.

The stages themselves are declared once, as data, in :mod:`flows.pipeline`; this
module only names the handles every feature module uses, so that no feature
module imports another to reach them.
"""

from __future__ import annotations

from flows.pipeline import stage

CLASSIFY = stage("phy_classify")
ARP_RSP = stage("ls_in_arp_rsp")
ND_RSP = stage("ls_in_nd_rsp")
ND_TLL = stage("ls_in_nd_rsp_tll")
L2_LOOKUP = stage("ls_in_l2_lookup")
DELIVER = stage("ls_out_deliver")
PORT_SEC = stage("ls_in_port_sec")
DHCP = stage("ls_in_dhcp")
PUNT = stage("ls_in_punt")
PRE_ACL = stage("ls_in_pre_acl")
OUT_PRE_ACL = stage("ls_out_pre_acl")
EXT_IN_FIP = stage("ext_in_fip")
FIP_SNAT = stage("lr_in_fip_snat")
EXT_RESOLVE = stage("lr_in_ext_resolve")
MAC_BINDING = stage("lr_in_mac_binding")
EXT_OUTPUT = stage("lr_in_ext_output")

OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000
ETH_TYPE_ARP = 0x0806
ARP_REQUEST, ARP_REPLY = 1, 2
