"""IP address and MAC management for subnets and ports, with Neutron's rules.

Pure functions over records and sets of used addresses: the caller
(:class:`topology.state.Topology`) gathers what is in use under its lock and
persists the result. Every address leaves here normalised by netaddr (``str`` of
an ``IPAddress``: dotted quad, or compact IPv6), and every MAC as
``aa:bb:cc:dd:ee:ff``, so set membership and the store's uniqueness constraints
compare like with like.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator, Mapping

import netaddr

from topology.model import FixedIP, Subnet
from topology.store import BadRequest, Conflict, Unavailable

MAC_PREFIX = 0xFA163E  # OpenStack's default base_mac fa:16:3e:00:00:00
ROUTER_OWNER_PREFIX = "network:router"  # only router ports may take a subnet's gateway address


def invalid_input(message: str) -> BadRequest:
    """Neutron's generic 400 ``InvalidInput``."""
    return BadRequest("InvalidInput", f"Invalid input for operation: {message}.")


# -- subnets -----------------------------------------------------------------------
def parse_cidr(cidr: str, ip_version: int | None = None) -> netaddr.IPNetwork:
    """Validate a subnet CIDR: a network address with a prefix, of ``ip_version`` if given."""
    try:
        net = netaddr.IPNetwork(cidr) if isinstance(cidr, str) and "/" in cidr else None
    except (netaddr.AddrFormatError, ValueError, TypeError):
        net = None
    if net is None:
        raise invalid_input(f"'{cidr}' is not a valid IP subnet")
    if net.ip != net.network:
        raise invalid_input(f"'{cidr}' isn't a recognized IP subnet cidr, '{net.cidr}' is recommended")
    if ip_version is not None and net.version != ip_version:
        raise invalid_input("cidr and ip_version are inconsistent")
    return net.cidr


def parse_subnet_cidr(cidr: str, ip_version: int | None = None) -> netaddr.IPNetwork:
    """A subnet's own CIDR: :func:`parse_cidr`, and never prefix length 0 (Neutron refuses 0.0.0.0/0 and ::/0
    for a subnet: every address on one L2 network; a route's destination may be /0)."""
    net = parse_cidr(cidr, ip_version)
    if net.prefixlen == 0:
        raise invalid_input("0 is not allowed as CIDR prefix length")
    return net


def _host_bounds(net: netaddr.IPNetwork) -> tuple[int, int]:
    """First and last assignable address (as ints) of a network: v4 loses network and broadcast."""
    if net.size <= 2 and net.version == 4:  # /31 and /32 (RFC 3021): every address is a host
        return net.first, net.last
    return net.first + 1, net.last - (1 if net.version == 4 else 0)


def parse_ip(value: str, version: int | None = None) -> netaddr.IPAddress:
    """Parse an IP address string (400 on garbage or wrong version)."""
    try:
        ip = netaddr.IPAddress(value, flags=netaddr.INET_PTON) if isinstance(value, str) else None
    except (netaddr.AddrFormatError, ValueError):
        ip = None
    if ip is None or (version is not None and ip.version != version):
        raise invalid_input(f"'{value}' is not a valid IP{'v' + str(version) if version else ''} address")
    return ip


def in_subnet(net: netaddr.IPNetwork, ip: netaddr.IPAddress) -> bool:
    """Whether ``ip`` is an assignable host address of ``net``."""
    lo, hi = _host_bounds(net)
    return ip.version == net.version and lo <= int(ip) <= hi


def default_gateway(net: netaddr.IPNetwork) -> str:
    """The first host address, Neutron's default gateway."""
    return str(netaddr.IPAddress(_host_bounds(net)[0], net.version))


def check_gateway(net: netaddr.IPNetwork, gateway: str | None) -> str | None:
    """Validate an explicit gateway (None: the subnet has no gateway)."""
    if gateway is None:
        return None
    ip = parse_ip(gateway, net.version)
    if not in_subnet(net, ip):
        raise invalid_input(f"Gateway IP {gateway} is not a valid host address of subnet {net}")
    return str(ip)


def default_pools(net: netaddr.IPNetwork, gateway: str | None) -> tuple[tuple[str, str], ...]:
    """Every host address of the CIDR except the gateway, as (start, end) ranges."""
    lo, hi = _host_bounds(net)
    ipset = netaddr.IPSet(netaddr.IPRange(netaddr.IPAddress(lo, net.version), netaddr.IPAddress(hi, net.version)))
    if gateway:
        ipset.remove(netaddr.IPAddress(gateway))
    return tuple((str(r[0]), str(r[-1])) for r in ipset.iter_ipranges())


def check_pools(net: netaddr.IPNetwork, pools: Iterable[Mapping[str, str]],
                gateway: str | None) -> tuple[tuple[str, str], ...]:
    """Validate explicit allocation pools ([{start, end}]) against the CIDR and gateway."""
    ranges: list[netaddr.IPRange] = []
    for pool in pools:
        shown = f"{pool.get('start')}-{pool.get('end')}"
        try:
            start = parse_ip(pool["start"], net.version)
            end = parse_ip(pool["end"], net.version)
        except (BadRequest, KeyError, TypeError):
            raise BadRequest("InvalidAllocationPool", f"The allocation pool {shown} is not valid.") from None
        if start > end:
            raise BadRequest("InvalidAllocationPool", f"The allocation pool {shown} is not valid.")
        if not (in_subnet(net, start) and in_subnet(net, end)):
            raise BadRequest("OutOfBoundsAllocationPool",
                             f"The allocation pool {shown} spans beyond the subnet cidr {net}.")
        ranges.append(netaddr.IPRange(start, end))
    ranges.sort(key=lambda r: r.first)
    for a, b in zip(ranges, ranges[1:], strict=False):
        if b.first <= a.last:
            raise Conflict("OverlappingAllocationPools",
                           f"Found overlapping allocation pools: {a} {b} for subnet {net}.")
    if gateway:
        gw = netaddr.IPAddress(gateway)
        for r in ranges:
            if gw in r:
                raise Conflict("GatewayConflictWithAllocationPools",
                               f"Gateway ip {gateway} conflicts with allocation pool {r}.")
    return tuple((str(r[0]), str(r[-1])) for r in ranges)


def overlapping(cidr: netaddr.IPNetwork, others: Iterable[Subnet]) -> Subnet | None:
    """The first of ``others`` whose CIDR overlaps ``cidr``, or None."""
    for other in others:
        o = netaddr.IPNetwork(other.cidr)
        if o.version == cidr.version and o.first <= cidr.last and cidr.first <= o.last:
            return other
    return None


# -- ports ------------------------------------------------------------------------------
_V6 = 1 << 128  # IPv6 keys sort after every IPv4 one, so a subnet's index never confuses the two


def _ip_key(ip: netaddr.IPAddress) -> int:
    return int(ip) + (_V6 if ip.version == 6 else 0)


def _address_key(addr: str) -> int | None:
    """The sort key of a normalised address string; None for anything :func:`_key_address` would not give back."""
    try:
        ip = netaddr.IPAddress(addr, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return _ip_key(ip) if str(ip) == addr else None


def _key_address(key: int) -> str:
    return str(netaddr.IPAddress(key - _V6, 6) if key >= _V6 else netaddr.IPAddress(key, 4))


class AddressIndex:
    """The addresses held in one subnet: a multiset of strings plus their keys in a sorted list.

    Membership is a dict lookup and the lowest free address at or above a point
    is a binary search (:meth:`first_free`), so allocating does not walk the
    addresses already held. The graph keeps one per (network, subnet), updated
    as ports come and go.
    """

    __slots__ = ("_count", "_sorted")

    def __init__(self, addresses: Iterable[str] = ()) -> None:
        self._count: dict[str, int] = {}
        self._sorted: list[int] = []
        for addr in addresses:
            self.add(addr)

    def add(self, addr: str) -> None:
        """Count one more holder of ``addr``."""
        n = self._count.get(addr, 0)
        self._count[addr] = n + 1
        if n == 0 and (key := _address_key(addr)) is not None:
            insort(self._sorted, key)

    def discard(self, addr: str) -> None:
        """Count one holder of ``addr`` less (nothing if it has none)."""
        n = self._count.get(addr, 0)
        if n > 1:
            self._count[addr] = n - 1
        elif n == 1:
            del self._count[addr]
            if (key := _address_key(addr)) is not None:
                i = bisect_left(self._sorted, key)
                if i < len(self._sorted) and self._sorted[i] == key:
                    del self._sorted[i]

    def without(self, addresses: Iterable[str]) -> AddressIndex:
        """A copy with one holder of each of ``addresses`` less."""
        out = AddressIndex()
        out._count = dict(self._count)
        out._sorted = list(self._sorted)
        for addr in addresses:
            out.discard(addr)
        return out

    def __contains__(self, addr: object) -> bool:
        return addr in self._count

    def __iter__(self) -> Iterator[str]:
        return iter(self._count)

    def __len__(self) -> int:
        return len(self._count)

    def counts(self) -> dict[str, int]:
        """Each held address with its number of holders."""
        return dict(self._count)

    def first_free(self, key: int) -> int:
        """The lowest key >= ``key`` that is not held."""
        keys = self._sorted
        i = bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            return key
        # keys are distinct and sorted, so keys[j] - j never decreases: the end of the
        # run of held keys starting at keys[i] is the first j where it exceeds key - i.
        base, lo, hi = key - i, i, len(keys)
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[mid] - mid > base:
                hi = mid
            else:
                lo = mid + 1
        return key + (lo - i)


class Taken:
    """Addresses not to hand out in one subnet: a held index (not modified) plus this request's extras."""

    __slots__ = ("_extra", "_extra_keys", "_held")

    def __init__(self, held: Iterable[str] | None = None) -> None:
        if held is None or isinstance(held, AddressIndex):
            self._held = held if held is not None else AddressIndex()
        else:
            self._held = AddressIndex(held)
        self._extra: set[str] = set()
        self._extra_keys: set[int] = set()

    def add(self, addr: str) -> None:
        """Take one more address (a gateway, an explicit request, an earlier pick)."""
        self._extra.add(addr)
        if (key := _address_key(addr)) is not None:
            self._extra_keys.add(key)

    def __contains__(self, addr: object) -> bool:
        return addr in self._extra or addr in self._held

    def first_free(self, key: int) -> int:
        """The lowest key >= ``key`` neither held nor taken here."""
        while True:
            key = self._held.first_free(key)
            if key not in self._extra_keys:
                return key
            key += 1


def lowest_free(subnet: Subnet, used: Iterable[str] | Taken | None) -> str | None:
    """The lowest address of the subnet's pools that is not in ``used`` (None: exhausted).

    ``used`` is a :class:`Taken`, an :class:`AddressIndex` or any set of address strings.
    """
    taken = used if isinstance(used, Taken) else Taken(used)
    for start, end in subnet.allocation_pools:
        first, last = netaddr.IPAddress(start), netaddr.IPAddress(end)
        key = taken.first_free(_ip_key(first))
        if key <= _ip_key(last):
            return _key_address(key)
    return None


def assign_fixed_ips(network_id: str, subnets: list[Subnet], requested: list[Mapping[str, str]] | None,
                     used: Mapping[str, set[str]], device_owner: str = "") -> tuple[FixedIP, ...]:
    """Resolve a port's ``fixed_ips`` request into addresses, Neutron style.

    ``subnets`` are the network's subnets in creation order; ``used`` maps a subnet
    id to the addresses other ports hold there (an :class:`AddressIndex`, which is
    read, never modified, or any set of strings). ``requested`` None means "one
    address from the first v4 subnet with room and one from the first v6 one";
    otherwise each entry has a ``subnet_id`` (auto address in it), an
    ``ip_address`` (in whichever subnet contains it), or both. Unknown subnet ids
    must have been rejected (404) by the caller.
    """
    taken = {sid: Taken(ips) for sid, ips in used.items()}
    by_id = {s.id: s for s in subnets}
    is_router = device_owner.startswith(ROUTER_OWNER_PREFIX)
    for s in subnets:
        # The gateway address is reserved for the router's interface.
        if s.gateway_ip and not is_router:
            taken.setdefault(s.id, Taken()).add(s.gateway_ip)
    if requested is None:
        return _auto_per_version(network_id, subnets, taken)
    result: list[FixedIP | None] = []
    auto: list[tuple[int, Subnet]] = []
    for req in requested:  # explicit addresses first, so an auto pick cannot steal one
        subnet = _subnet_of_request(network_id, req, subnets, by_id)
        if req.get("ip_address") is None:
            auto.append((len(result), subnet))
            result.append(None)
            continue
        ip = parse_ip(req["ip_address"])
        if not in_subnet(netaddr.IPNetwork(subnet.cidr), ip):
            raise BadRequest("InvalidIpForSubnet",
                             f"IP address {req['ip_address']} is not a valid IP for the specified subnet.")
        addr = str(ip)
        if addr in taken.get(subnet.id, ()):
            raise Conflict("IpAddressAlreadyAllocated",
                           f"IP address {addr} already allocated in subnet {subnet.id}")
        taken.setdefault(subnet.id, Taken()).add(addr)
        result.append(FixedIP(subnet.id, addr))
    for index, subnet in auto:
        addr = lowest_free(subnet, taken.get(subnet.id))
        if addr is None:
            raise Conflict("IpAddressGenerationFailure", f"No more IP addresses available on network {network_id}.")
        taken.setdefault(subnet.id, Taken()).add(addr)
        result[index] = FixedIP(subnet.id, addr)
    return tuple(f for f in result if f is not None)


def _auto_per_version(network_id: str, subnets: list[Subnet], taken: dict[str, Taken]) -> tuple[FixedIP, ...]:
    result = []
    for version in (4, 6):
        candidates = [s for s in subnets if s.ip_version == version]
        if not candidates:
            continue
        for s in candidates:
            addr = lowest_free(s, taken.get(s.id))
            if addr is not None:
                result.append(FixedIP(s.id, addr))
                break
        else:
            raise Conflict("IpAddressGenerationFailure", f"No more IP addresses available on network {network_id}.")
    return tuple(result)


def _subnet_of_request(network_id: str, req: Mapping[str, str], subnets: list[Subnet],
                       by_id: dict[str, Subnet]) -> Subnet:
    subnet_id, ip_address = req.get("subnet_id"), req.get("ip_address")
    if subnet_id is not None:
        subnet = by_id.get(subnet_id)
        if subnet is None:
            raise invalid_input(f"Failed to create port on network {network_id}, "
                                f"because fixed_ips included invalid subnet {subnet_id}")
        return subnet
    if ip_address is None:
        raise invalid_input("Exactly one of subnet_id or ip_address is required in each fixed_ips entry")
    ip = parse_ip(ip_address)
    for subnet in subnets:
        if in_subnet(netaddr.IPNetwork(subnet.cidr), ip):
            return subnet
    raise BadRequest("InvalidIpForNetwork", f"IP address {ip_address} is not a valid IP for any of the "
                     "subnets on the specified network.")


def normalize_mac(value: str) -> str:
    """Validate a unicast MAC address and return it as ``aa:bb:cc:dd:ee:ff``."""
    try:
        eui = netaddr.EUI(value, dialect=netaddr.mac_unix_expanded) if isinstance(value, str) else None
    except (netaddr.AddrFormatError, ValueError, TypeError):
        eui = None
    # Multicast (incl. broadcast) and all-zero addresses cannot be a port's source MAC.
    if eui is None or eui.version != 48 or eui.words[0] & 1 or int(eui) == 0:
        raise invalid_input(f"'{value}' is not a valid MAC address")
    return str(eui)


def generate_mac(in_use: Callable[[str], bool], rng: random.Random | None = None) -> str:
    """A random ``fa:16:3e:xx:xx:xx`` MAC for which ``in_use`` is false."""
    rng = rng or random.SystemRandom()
    for _ in range(16):
        mac = str(netaddr.EUI((MAC_PREFIX << 24) | rng.getrandbits(24), dialect=netaddr.mac_unix_expanded))
        if not in_use(mac):
            return mac
    raise Unavailable("MacAddressGenerationFailure", "Unable to generate unique mac.")
