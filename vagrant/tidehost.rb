# Tidehost's helpers for the Vagrantfile `tidehost vagrant init` writes beside this file.
#
# - Each node's NoCloud seed (seeds/NODE/) goes to the node as a CD-ROM labelled cidata,
#   packed into .vagrant/tidehost/NODE-cidata.iso before `vagrant up` creates the domain: the
#   node boots once, straight into its cluster role (no provisioner, no reboot).
# - Before `vagrant up` (libvirt): libvirt answers, vagrant runs in libvirtd's network
#   namespace, no foreign domain has a node's name, QEMU can read the seed, and the box
#   catalog answers and lists a libvirt box; each failure is one clear message.
# - After `vagrant destroy`: the domain's NVRAM copy and box images no domain uses any
#   more are removed, so libvirt is left as it was.
require "fileutils"
require "json"
require "net/http"
require "open3"
require "uri"

module Tidehost
  OVMF_CODE = ENV.fetch("TIDEHOST_OVMF_CODE", "/usr/share/OVMF/OVMF_CODE_4M.fd")
  SEED_FILES = %w[user-data meta-data network-config].freeze
  NVRAM = {} # machine name => the NVRAM file of its domain, between before and after destroy

  # A message Vagrant prints as it is, without a backtrace.
  class Error < Vagrant::Errors::VagrantError
    def initialize(message)
      @tidehost_message = message
      super()
    end

    def error_message
      "tidehost: #{@tidehost_message}"
    end
  end

  # vagrant-libvirt's default domain prefix (the folder's name), set explicitly so that
  # the checks below know each domain's name.
  def self.prefix(dir)
    File.basename(dir).gsub(/[^-a-z0-9_.]/i, "") + "_"
  end

  # Each domain's own copy of the firmware's variable store (libvirt makes it from the
  # template when the domain starts; TIDEHOST_NVRAM_DIR for a libvirt that keeps them elsewhere).
  def self.nvram(domain)
    File.join(ENV.fetch("TIDEHOST_NVRAM_DIR", "/var/lib/libvirt/qemu/nvram"), "#{domain}_VARS.fd")
  end

  def self.seed_iso(dir, name)
    File.join(dir, ".vagrant", "tidehost", "#{name}-cidata.iso")
  end

  def self.which(tool)
    ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).any? { |d| File.executable?(File.join(d, tool)) }
  end

  # seeds/NAME/ packed as an ISO with the volume label cidata (when missing or older).
  def self.pack_seed(dir, name)
    src = File.join(dir, "seeds", name)
    files = SEED_FILES.map { |f| File.join(src, f) }.select { |f| File.file?(f) }
    unless files.include?(File.join(src, "user-data"))
      raise Error, "#{src}/user-data: no such file (run `tidehost vagrant init` for this folder again)"
    end
    iso = seed_iso(dir, name)
    return iso if File.file?(iso) && files.all? { |f| File.mtime(f) <= File.mtime(iso) }
    tool = %w[genisoimage mkisofs].find { |t| which(t) }
    raise Error, "genisoimage is needed to pack #{src} as a CD-ROM (apt-get install genisoimage)" unless tool
    FileUtils.mkdir_p(File.dirname(iso))
    out, status = Open3.capture2e(tool, "-quiet", "-output", "#{iso}.tmp", "-volid", "cidata",
                                  "-joliet", "-rock", *files)
    raise Error, "#{tool} could not pack #{src}: #{out.strip.lines.last}" unless status.success?
    File.chmod(0o644, "#{iso}.tmp")
    File.rename("#{iso}.tmp", iso)
    iso
  end

  def self.last_line(e)
    e.message.to_s.strip.lines.last.to_s.strip
  end

  def self.libvirt(machine)
    machine.provider.driver.connection.client
  rescue StandardError => e
    raise Error, "libvirt does not answer at #{machine.provider_config.uri} (#{last_line(e)}); " \
                 "start it (sudo systemctl start libvirtd; where no systemd runs it: " \
                 "tidehost vagrant libvirt start)"
  end

  # The network namespace libvirtd runs in when it is not ours (nil: ours, or not known).
  def self.foreign_netns
    pid = Integer(File.read("/run/libvirtd.pid").split.first)
    theirs = File.stat("/proc/#{pid}/ns/net").ino
    return nil if theirs == File.stat("/proc/self/ns/net").ino
    found = Dir.glob("/run/netns/*").find { |p| (File.stat(p).ino rescue nil) == theirs }
    found ? File.basename(found) : "that of pid #{pid}"
  rescue StandardError
    nil
  end

  # The first folder above path that other users cannot enter (QEMU runs as libvirt-qemu).
  def self.closed_dir(path)
    dir = File.dirname(File.expand_path(path))
    until dir == "/"
      return dir if (File.stat(dir).mode & 0o001).zero?
      dir = File.dirname(dir)
    end
    nil
  end

  def self.check_catalog(url, box, provider)
    return unless url =~ %r{\Ahttps?://}
    uri = URI(url)
    begin
      res = Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https",
                            open_timeout: 10, read_timeout: 30) { |h| h.get(uri.request_uri) }
    rescue StandardError, Timeout::Error => e
      raise Error, "the box catalog #{url} does not answer (#{last_line(e)}): serve the " \
                   "channel repository there (tidehost channel serve REPO)"
    end
    if res.code == "404"
      raise Error, "#{url}: no box catalog for this channel there (HTTP 404): publish the " \
                   "channel's boxes (tidehost vagrant catalog publish REPO --channel CHANNEL ...)"
    end
    raise Error, "#{url}: HTTP #{res.code} #{res.message}" unless res.is_a?(Net::HTTPSuccess)
    doc = begin
      JSON.parse(res.body)
    rescue JSON::ParserError
      raise Error, "#{url}: not a Vagrant box catalog (not JSON)"
    end
    raise Error, "#{url}: not a Vagrant box catalog" unless doc.is_a?(Hash)
    raise Error, "#{url}: the catalog of #{doc['name'].inspect}, not #{box.inspect}" unless doc["name"] == box
    listed = (doc["versions"] || []).any? { |v| (v["providers"] || []).any? { |p| p["name"] == provider.to_s } }
    raise Error, "#{url}: no #{provider} box listed (publish one: --box #{provider}=FILE)" unless listed
  end

  # Everything `vagrant up` needs, checked before it starts (libvirt only).
  def self.preflight(machine, dir, box_url)
    uri = machine.provider_config.uri
    conn = libvirt(machine)
    if uri.start_with?("qemu:///system") && (ns = foreign_netns)
      raise Error, "libvirtd runs in network namespace #{ns}, and vagrant must run there to " \
                   "reach its guests: ip netns exec #{ns} vagrant #{ARGV.join(' ')}"
    end
    if machine.id.nil?
      name = "#{machine.provider_config.default_prefix}#{machine.name}".gsub(/[^-a-z0-9_.]/i, "")
      taken = begin
        conn.lookup_domain_by_name(name)
      rescue StandardError
        nil
      end
      if taken
        raise Error, "libvirt already has a domain #{name}, not made by this folder's Vagrant: " \
                     "remove it (virsh -c #{uri} undefine --nvram #{name}) or run the cluster " \
                     "from a folder of another name"
      end
    end
    iso = pack_seed(dir, machine.name.to_s)
    if uri.start_with?("qemu:///system") && ENV["TIDEHOST_SEED_CHECK"] != "0" &&
       (closed = closed_dir(iso))
      raise Error, "libvirt's QEMU cannot read #{iso}: #{closed} is closed to other users " \
                   "(chmod o+x #{closed}, or keep the cluster in another folder; " \
                   "TIDEHOST_SEED_CHECK=0 skips this check)"
    end
    check_catalog(box_url, machine.config.vm.box, :libvirt) if machine.box.nil?
  end

  def self.remember_nvram(machine)
    return if machine.id.nil?
    xml = libvirt(machine).lookup_domain_by_uuid(machine.id).xml_desc
    path = xml[%r{<nvram[^>]*>([^<]+)</nvram>}, 1]
    NVRAM[machine.name] = path if path
  rescue Error, StandardError
    nil
  end

  # virsh's output (libvirt's own client: the plugin's connection may be gone after destroy).
  def self.virsh(machine, *args)
    out, status = Open3.capture2e("virsh", "-c", machine.provider_config.uri, *args)
    raise Error, "virsh #{args.join(' ')}: #{out.strip.lines.last}" unless status.success?
    out
  end

  # After destroy: the domain's NVRAM copy, and the box's images in the storage pool that
  # no volume is backed by any more.
  def self.clean_up(machine, box)
    path = NVRAM.delete(machine.name)
    if path && File.exist?(path)
      begin
        File.delete(path)
        machine.ui.info("tidehost: removed #{path}")
      rescue SystemCallError => e
        machine.ui.warn("tidehost: #{path} is left (#{e.message}): sudo rm #{path}")
      end
    end
    pool = machine.provider_config.storage_pool_name || "default"
    vols = virsh(machine, "vol-list", "--pool", pool).lines.drop(2).map { |l| l.split }.reject(&:empty?)
    backing = vols.map { |name, _| virsh(machine, "vol-dumpxml", "--pool", pool, name)[%r{<backingStore>\s*<path>([^<]+)</path>}, 1] }
    stem = "#{box.gsub('/', '-VAGRANTSLASH-')}_vagrant_box_image_"
    vols.each do |name, vpath|
      next unless name.start_with?(stem) && !backing.include?(vpath)
      virsh(machine, "vol-delete", "--pool", pool, name)
      machine.ui.info("tidehost: removed the box image #{name} (no domain uses it)")
    end
  rescue Error, StandardError => e
    machine.ui.warn("tidehost: clean-up after destroy: #{last_line(e)}")
  end

  def self.triggers(config, dir, box_url)
    config.trigger.before :up do |t|
      t.name = "tidehost: preflight"
      t.ruby do |_env, machine|
        if machine.provider_name == :libvirt
          preflight(machine, dir, box_url)
        else
          pack_seed(dir, machine.name.to_s)
        end
      end
    end
    config.trigger.before :destroy do |t|
      t.ruby { |_env, machine| remember_nvram(machine) if machine.provider_name == :libvirt }
    end
    config.trigger.after :destroy do |t|
      t.ruby { |_env, machine| clean_up(machine, machine.config.vm.box) if machine.provider_name == :libvirt }
    end
  end
end
