"""The OVF descriptor of the VirtualBox box (pure text).

One VM: 2 vCPUs, 2 GiB, one SATA (AHCI) disk, one virtio NIC on NAT. The cloud kernel has
neither an IDE nor an e1000 driver in the initrd, but AHCI and virtio-net it has. EFI
firmware is switched on by the box's Vagrantfile (``modifyvm --firmware efi``), which an
OVF 1.0 descriptor cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

VMDK_STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


@dataclass(frozen=True)
class OvfSpec:
    name: str
    disk_file: str  # the VMDK's name inside the box
    capacity: int  # bytes: the disk's virtual size
    cpus: int = 2
    memory_mib: int = 2048


def _item(**fields: str | int) -> str:
    # CIM_ResourceAllocationSettingData elements, in the schema's (alphabetical) order.
    body = "".join(
        f"        <rasd:{k}>{escape(str(v))}</rasd:{k}>\n" for k, v in sorted(fields.items())
    )
    return f"      <Item>\n{body}      </Item>\n"


def ovf_descriptor(s: OvfSpec) -> str:
    items = "".join((
        _item(Caption=f"{s.cpus} virtual CPU", Description="Number of virtual CPUs",
              ElementName=f"{s.cpus} virtual CPU", InstanceID=1, ResourceType=3,
              VirtualQuantity=s.cpus),
        _item(AllocationUnits="MegaBytes", Caption=f"{s.memory_mib} MB of memory",
              Description="Memory Size", ElementName=f"{s.memory_mib} MB of memory",
              InstanceID=2, ResourceType=4, VirtualQuantity=s.memory_mib),
        _item(Address=0, Caption="sataController0", Description="SATA Controller",
              ElementName="sataController0", InstanceID=3, ResourceSubType="AHCI",
              ResourceType=20),
        _item(AddressOnParent=0, Caption="disk1", Description="Disk Image",
              ElementName="disk1", HostResource="/disk/vmdisk1", InstanceID=4, Parent=3,
              ResourceType=17),
        _item(AutomaticAllocation="true", Caption="Ethernet adapter on 'NAT'",
              Connection="NAT", ElementName="Ethernet adapter on 'NAT'", InstanceID=5,
              ResourceSubType="virtio", ResourceType=10),
    ))  # fmt: skip
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US"
    xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href={quoteattr(s.disk_file)}/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{s.capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1"
        ovf:format="{VMDK_STREAM}"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id={quoteattr(s.name)}>
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="96">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian_64</Description>
      <vbox:OSType ovf:required="false">Debian_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{escape(s.name)}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
{items}    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""
