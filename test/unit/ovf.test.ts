import {describe, expect, it} from 'vitest'

import {BoxError} from '../../src/lib/core/errors.js'
import {ovfDisks} from '../../src/providers/virtualbox/ovf.js'

/** Trimmed from what `VBoxManage export` writes for a Vagrant base box (OVF 1.0). */
const VIRTUALBOX_EXPORT = `<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="box-disk001.vmdk"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="68719476736" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="6e8ea2b5-3b2e-4c5e-9d07-0d1c2b6a1f10"/>
  </DiskSection>
  <VirtualSystem ovf:id="debian-12">
    <Info>A virtual machine</Info>
    <VirtualHardwareSection>
      <Item>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`

describe('ovfDisks', () => {
  it('reads the disk file of a VirtualBox export through DiskSection → References', () => {
    expect(ovfDisks(VIRTUALBOX_EXPORT)).toEqual([{id: 'vmdisk1', file: 'box-disk001.vmdk'}])
  })

  it('takes any namespace prefix (or none), single quotes, entities, and ignores comments', () => {
    const xml = `<o:Envelope xmlns:o="http://schemas.dmtf.org/ovf/envelope/1">
      <!-- <o:File o:id="file1" o:href="commented-out.vmdk"/> -->
      <o:References><o:File o:href='disk&amp;1.vmdk' o:id='f1'></o:File></o:References>
      <DiskSection><Disk diskId="d1" fileRef="f1" /></DiskSection>
    </o:Envelope>`
    expect(ovfDisks(xml)).toEqual([{id: 'd1', file: 'disk&1.vmdk'}])
  })

  it('lists every disk in order, so a caller can refuse a box with several', () => {
    const xml = VIRTUALBOX_EXPORT.replace(
      '</References>',
      '<File ovf:id="file2" ovf:href="box-disk002.vmdk"/></References>',
    ).replace(
      '</DiskSection>',
      '<Disk ovf:capacity="1073741824" ovf:diskId="vmdisk2" ovf:fileRef="file2"/></DiskSection>',
    )
    expect(ovfDisks(xml).map((disk) => disk.file)).toEqual(['box-disk001.vmdk', 'box-disk002.vmdk'])
  })

  it('refuses a descriptor without DiskSection, a dangling fileRef and a disk file outside the box', () => {
    const problem = (xml: string) => {
      try {
        ovfDisks(xml, 'box.ovf')
      } catch (error) {
        expect(error).toBeInstanceOf(BoxError)
        return (error as Error).message
      }
      throw new Error('expected a refusal')
    }
    expect(problem('<Envelope><References/></Envelope>')).toBe(
      'cannot read the disks of box.ovf: it has no DiskSection',
    )
    expect(problem(VIRTUALBOX_EXPORT.replace('ovf:fileRef="file1"', 'ovf:fileRef="file9"'))).toMatch(
      /disk vmdisk1 names no file in References \(ovf:fileRef "file9"\)/,
    )
    expect(problem(VIRTUALBOX_EXPORT.replace('box-disk001.vmdk', '../../etc/shadow'))).toMatch(
      /"\.\.\/\.\.\/etc\/shadow" is not a plain file name/,
    )
  })
})
