/**
 * The guest agent's contract (provisioners/box-agent): what a box image and the host
 * agree on, whichever provider carries the channel. The builder writes it into the image
 * and the box's metadata; providers open the port and speak the line protocol:
 * a request is a line "ID VERB [ARG]", the answer "ID ok TEXT" or "ID error TEXT".
 */

/** The virtio-serial port's name in the guest: /dev/virtio-ports/box.agent. */
export const AGENT_PORT_NAME = 'box.agent'

/** Protocol version a box's metadata declares (`box.agent`) when its image runs box-agent. */
export const AGENT_PROTOCOL = 1
